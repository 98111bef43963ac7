//! MQTT over WebSocket (`ws://` and, on a TLS listener, `wss://`): the handshake (answering the `mqtt`
//! subprotocol), then a bridge that turns binary WebSocket messages into a byte stream for the same connection
//! code as TCP ([`crate::connection::serve`]). The bridge is bounded: one 64 KiB pipe each way, and WebSocket
//! messages no larger than the gateway's packet limit. Text messages are a protocol violation and close the
//! connection (MQTT over WebSocket is binary).

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Callback, ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

const PIPE_BYTES: usize = 64 * 1024;

/// Answer the WebSocket handshake on `stream` and return the MQTT byte stream inside it.
pub(crate) async fn accept<S>(stream: S, message_bytes_max: usize) -> Result<DuplexStream, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = WebSocketConfig::default()
        .max_message_size(Some(message_bytes_max))
        .max_frame_size(Some(message_bytes_max));
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, MqttSubprotocol, Some(config))
        .await
        .map_err(|e| format!("WebSocket handshake: {e}"))?;
    let (mine, theirs) = tokio::io::duplex(PIPE_BYTES);
    tokio::spawn(bridge(ws, theirs));
    Ok(mine)
}

/// Echo the `mqtt` subprotocol, which MQTT clients ask for and some insist on.
struct MqttSubprotocol;

impl Callback for MqttSubprotocol {
    fn on_request(self, request: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
        let asks_mqtt = request
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim().eq_ignore_ascii_case("mqtt"));
        if asks_mqtt {
            response
                .headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
        }
        Ok(response)
    }
}

async fn bridge<S>(ws: tokio_tungstenite::WebSocketStream<S>, pipe: DuplexStream)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mut pipe_rd, mut pipe_wr) = tokio::io::split(pipe);
    let inbound = async {
        while let Some(msg) = ws_rx.next().await {
            match msg {
                Ok(Message::Binary(bytes)) => {
                    if pipe_wr.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Ok(Message::Text(_)) | Ok(Message::Close(_)) | Err(_) => break,
            }
        }
        let _ = pipe_wr.shutdown().await;
    };
    let outbound = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match pipe_rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws_tx
                        .send(Message::Binary(bytes::Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = ws_tx.close().await;
    };
    tokio::select! {
        _ = inbound => {}
        _ = outbound => {}
    }
}
