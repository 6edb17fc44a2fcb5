//! The balancer against real sockets: an early answer from a backend that will not read
//! the body reaches a client that is still sending it.

#![allow(clippy::expect_used)] // tests state their expectations

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use workpool_local_cluster::balancer::Balancer;

const ANSWER: &[u8] =
    b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
const BODY_BYTES: usize = 20 << 20;

/// A backend like an HTTP server rejecting a body by its declared length: it reads the
/// first bytes, answers, and closes with the rest of the body unread, which resets the
/// connection.
async fn early_answering_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let address = listener.local_addr().expect("backend address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut head = [0u8; 1024];
            let _ = stream.read(&mut head).await;
            let _ = stream.write_all(ANSWER).await;
            drop(stream);
        }
    });
    address
}

async fn balancer_in_front_of(backend: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind balancer");
    let address = listener.local_addr().expect("balancer address");
    tokio::spawn(Balancer::new(vec![backend]).serve(listener));
    address
}

#[tokio::test]
async fn an_early_answer_reaches_a_client_still_sending_its_body() {
    let backend = early_answering_backend().await;
    let balancer = balancer_in_front_of(backend).await;
    let mut client = TcpStream::connect(balancer).await.expect("connect");
    // Like an HTTP client that writes the whole body before it reads the answer.
    let head =
        format!("POST /api/v1/work HTTP/1.1\r\nhost: x\r\ncontent-length: {BODY_BYTES}\r\n\r\n");
    client.write_all(head.as_bytes()).await.expect("write head");
    client
        .write_all(&vec![b'x'; BODY_BYTES])
        .await
        .expect("the whole body is taken, not reset");
    client.shutdown().await.expect("shutdown");
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.expect("read answer");
    assert_eq!(answer, ANSWER);
}

#[tokio::test]
async fn a_backend_answering_after_the_whole_request_is_relayed_both_ways() {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let backend = listener.local_addr().expect("backend address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut request = Vec::new();
            let _ = stream.read_to_end(&mut request).await;
            let _ = stream.write_all(&request).await;
        }
    });
    let balancer = balancer_in_front_of(backend).await;
    let mut client = TcpStream::connect(balancer).await.expect("connect");
    let request: Vec<u8> = (0..BODY_BYTES).map(|i| (i % 251) as u8).collect();
    let (mut reader, mut writer) = client.split();
    let send = async {
        writer.write_all(&request).await.expect("write");
        writer.shutdown().await.expect("shutdown");
    };
    let mut echoed = Vec::new();
    let receive = reader.read_to_end(&mut echoed);
    let ((), received) = tokio::join!(send, receive);
    received.expect("read echo");
    assert!(echoed == request, "the echo is the request, byte for byte");
}
