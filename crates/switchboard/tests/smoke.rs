mod common;
use common::TestServer;

#[tokio::test]
async fn harness_starts_and_answers() {
    let server = TestServer::start().await;
    let (status, _) = server.get_json("/api/rooms/lobby/presence").await;
    assert_eq!(status, 200);
}
