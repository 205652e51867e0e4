/// Why the NATS side could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("invalid NATS configuration: {0}")]
    Config(String),
    #[error("cannot connect to NATS: {0}")]
    Connect(String),
    #[error("JetStream set-up failed: {0}")]
    Setup(String),
    #[error("NATS subscription failed: {0}")]
    Subscribe(String),
}
