//! A TCP forwarder that can be shut: closed, it resets every open
//! connection and every new one, as a service that went down does. Tests
//! put it in front of a shared server (the registry of the local stack)
//! to take it away from one sluice without stopping it for other tests.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub struct TcpGate {
    /// `127.0.0.1:<port>` the gate listens on.
    pub addr: String,
    open: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

impl TcpGate {
    /// Forwards to `upstream` (`host:port`), open.
    pub fn start(upstream: &str) -> TcpGate {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let open = Arc::new(AtomicBool::new(true));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let (gate_open, gate_streams, upstream) =
            (open.clone(), streams.clone(), upstream.to_owned());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !gate_open.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let mut held = gate_streams.lock().unwrap();
                for stream in [&client, &server] {
                    held.push(stream.try_clone().unwrap());
                }
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        TcpGate {
            addr,
            open,
            streams,
        }
    }

    /// Closed: open connections are cut and new ones refused.
    pub fn set_open(&self, open: bool) {
        self.open.store(open, Ordering::SeqCst);
        if !open {
            for stream in self.streams.lock().unwrap().drain(..) {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || -> io::Result<()> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = from.read(&mut buf)?;
            if n == 0 {
                let _ = to.shutdown(Shutdown::Write);
                return Ok(());
            }
            to.write_all(&buf[..n])?;
        }
    });
}
