#!/usr/bin/env python3
"""Memory of WebSocket resumes that do not read (not in CI; RELIABILITY.md).

Usage: replay_memory.py PORT CLIENTS SERVER_PID, against a standalone started
with --retention-count 3000 and unthrottled publish/history limits. Publishes
2,000 events of 4 KB into room "big", then opens CLIENTS WebSockets with a
4 KiB receive buffer that resume from the first event and read nothing, and
prints the server RSS each second.
"""
import socket, base64, os, json, time, urllib.request, sys, concurrent.futures
port=int(sys.argv[1]); n=int(sys.argv[2]); pid=int(sys.argv[3])
def rss(): return int([l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0].split()[1])//1024
first=None
def pub(i):
    req=urllib.request.Request(f"http://127.0.0.1:{port}/api/rooms/big/messages",data=json.dumps({"text":"x"*4000,"id":f"m{i}"}).encode(),headers={"content-type":"application/json","x-user":"p"})
    return json.loads(urllib.request.urlopen(req).read())
with concurrent.futures.ThreadPoolExecutor(8) as ex:
    acks=list(ex.map(pub, range(2000)))
first=min(acks,key=lambda a:int(a["cursor"].rsplit(":",1)[1]))["cursor"]
print("published; first", first, "rss MiB", rss(), flush=True)
socks=[]
for i in range(n):
    s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1",port))
    key=base64.b64encode(os.urandom(16)).decode()
    s.send(f"GET /ws?user=r{i} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    socks.append(s)
time.sleep(1)
for s in socks:
    s.recv(300)
    p=json.dumps({"type":"subscribe","room":"big","since":first}).encode()
    s.send(bytes([0x81,0x80|len(p)])+b"\0\0\0\0"+p)
for t in range(6):
    time.sleep(1); print("t", t, "rss MiB", rss(), flush=True)
