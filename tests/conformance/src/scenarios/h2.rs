//! What HTTP/2 changes for a sticky app (the `Backend::H2c` run): a client
//! speaking h2c with prior knowledge may split `Cookie` over several header
//! fields (RFC 9113, 8.2.3) and send bodies without `content-length`. The
//! direct scenarios speak h2c straight to one Machine with hyper's client
//! (so the fields are sent exactly as written); the cluster one sends `curl
//! --http2-prior-knowledge` through flysim with `h2_backend` (hyper's client
//! when curl is not installed).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use super::{Kind, OTHER, Scenario, with_cluster, with_single};

/// An answer over h2c: status, headers, body text.
struct H2Response {
    status: u16,
    headers: http::HeaderMap,
    text: String,
}

impl H2Response {
    fn one(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn summary(&self) -> String {
        format!(
            "{} fly-replay={:?} set-cookie={:?} body={:?}",
            self.status,
            self.one("fly-replay"),
            self.one("set-cookie"),
            self.text
        )
    }
}

type ChunkBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// A body of `chunks`, with no declared length.
fn chunked(chunks: &[&'static str]) -> ChunkBody {
    let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = chunks
        .iter()
        .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
        .collect();
    BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)))
}

/// Sends one request over a new h2c (prior knowledge) connection to `addr`;
/// `headers` are sent as separate fields in order (two `cookie` entries
/// stay two fields).
async fn h2c(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: ChunkBody,
) -> Result<H2Response, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .map_err(|e| format!("h2c handshake with {addr}: {e}"))?;
    let driver = tokio::spawn(connection);
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(body).map_err(|e| format!("request: {e}"))?;
    let exchange = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("h2c request to {addr}: {e}"))?;
        if resp.version() != http::Version::HTTP_2 {
            return Err(format!("answered in {:?}", resp.version()));
        }
        let (parts, body) = resp.into_parts();
        let bytes = body
            .collect()
            .await
            .map_err(|e| format!("h2c body from {addr}: {e}"))?
            .to_bytes();
        Ok(H2Response {
            status: parts.status.as_u16(),
            headers: parts.headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        })
    };
    let result = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no h2c answer from {addr} within 10 s")));
    driver.abort();
    result
}

/// `GET /` through flysim's front with `Cookie` split over two fields, by
/// `curl --http2-prior-knowledge` when curl is installed (else hyper's h2c
/// client): the status and body.
async fn curl_split_cookie(
    front: SocketAddr,
    force: &str,
    pinned: &str,
) -> Result<(u16, String), String> {
    let force_header = format!("fly-force-instance-id: {force}");
    let pin_header = format!("Cookie: fly-machine-id={pinned}");
    let curl = tokio::process::Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--http2-prior-knowledge",
            "--max-time",
            "10",
            "-H",
            &force_header,
            "-H",
            "Cookie: theme=dark",
            "-H",
            &pin_header,
            "--write-out",
            "\n%{http_code} %{http_version}",
        ])
        .arg(format!("http://{front}/"))
        .output()
        .await;
    match curl {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let (body, tail) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
            let (code, version) = tail.split_once(' ').unwrap_or((tail, ""));
            ensure!(version == "2", "curl spoke HTTP/{version}: {text:?}");
            let code = code
                .parse()
                .map_err(|_| format!("curl printed no status: {text:?}"))?;
            Ok((code, body.to_owned()))
        }
        Ok(out) => Err(format!(
            "curl --http2-prior-knowledge failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        // No curl on this machine: the same request with hyper's client.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let pin = format!("fly-machine-id={pinned}");
            let res = h2c(
                front,
                "GET",
                "/",
                &[
                    ("fly-force-instance-id", force),
                    ("cookie", "theme=dark"),
                    ("cookie", &pin),
                ],
                chunked(&[]),
            )
            .await?;
            Ok((res.status, res.text))
        }
        Err(e) => Err(format!("cannot run curl: {e}")),
    }
}

/// Whether the app at `addr` answers `GET /health` over h2c with prior
/// knowledge (`Err` says what happened instead).
pub(crate) async fn answers_h2c(addr: SocketAddr) -> Result<(), String> {
    let res = h2c(addr, "GET", "/health", &[], chunked(&[])).await?;
    ensure!(res.status == 200, "GET /health over h2c: {}", res.summary());
    Ok(())
}

pub(crate) fn all() -> Vec<Scenario> {
    vec![
        scenario!(
            "h2c-split-cookie-replays",
            Direct,
            "over h2c, a pin cookie in the second of two Cookie fields is found: the request is replayed, the handler does not run",
            |ctx| {
                with_single(ctx, |_, addr, me| {
                    Box::pin(async move {
                        let pin = format!("fly-machine-id={OTHER}");
                        let res = h2c(
                            addr,
                            "GET",
                            "/",
                            &[("cookie", "theme=dark; lang=en"), ("cookie", &pin)],
                            chunked(&[]),
                        )
                        .await?;
                        ensure!(
                            res.status == 307
                                && res
                                    .one("fly-replay")
                                    .is_some_and(|v| v.contains(&format!("instance={OTHER}"))),
                            "expected a replay to {OTHER}: {}",
                            res.summary()
                        );
                        ensure!(
                            res.one("set-cookie").is_none(),
                            "a replay sets no cookie: {}",
                            res.summary()
                        );
                        // The pin in the first field works too, and the
                        // handler ran only now.
                        let mine = format!("fly-machine-id={me}");
                        let res = h2c(
                            addr,
                            "GET",
                            "/",
                            &[("cookie", &mine), ("cookie", "theme=dark")],
                            chunked(&[]),
                        )
                        .await?;
                        ensure!(
                            res.status == 200 && res.text == format!("machine={me} handled=1"),
                            "{}",
                            res.summary()
                        );
                        Ok(())
                    })
                })
                .await
            }
        ),
        scenario!(
            "h2c-upload-without-length",
            Direct,
            "over h2c, an upload without content-length is read whole; pinned elsewhere it is served here (its length is unknown, so it cannot be replayed)",
            |ctx| {
                with_single(ctx, |_, addr, me| {
                    Box::pin(async move {
                        let mine = format!("fly-machine-id={me}");
                        let res = h2c(
                            addr,
                            "POST",
                            "/upload",
                            &[("cookie", &mine)],
                            chunked(&["hello ", "over ", "h2c"]),
                        )
                        .await?;
                        ensure!(
                            res.status == 200 && res.text == format!("machine={me} bytes=14"),
                            "{}",
                            res.summary()
                        );
                        let elsewhere = format!("fly-machine-id={OTHER}");
                        let res = h2c(
                            addr,
                            "POST",
                            "/upload",
                            &[("cookie", "a=1"), ("cookie", &elsewhere)],
                            chunked(&["abc", "def"]),
                        )
                        .await?;
                        ensure!(
                            res.status == 200
                                && res.text == format!("machine={me} bytes=6")
                                && res.one("fly-replay").is_none(),
                            "a body of unknown length must be served here: {}",
                            res.summary()
                        );
                        Ok(())
                    })
                })
                .await
            }
        ),
        scenario!(
            "h2c-curl-split-cookie-through-flysim",
            Cluster,
            "curl --http2-prior-knowledge with two Cookie fields naming another Machine, through flysim with h2_backend, is replayed there",
            |ctx| {
                with_cluster(ctx, |c| {
                    Box::pin(async move {
                        let ids = c.sim.machine_ids();
                        let (first, pinned) = (&ids[0], &ids[2]);
                        let before = c.replays();
                        let (status, body) = curl_split_cookie(c.front(), first, pinned).await?;
                        ensure!(
                            status == 200 && body.starts_with(&format!("machine={pinned} ")),
                            "expected Machine {pinned} to serve it: {status} {body:?}"
                        );
                        ensure!(
                            c.replays() > before,
                            "Machine {first} did not replay: {}",
                            c.sim.report()
                        );
                        Ok(())
                    })
                })
                .await
            }
        ),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_unique_and_marked() {
        let all = super::all();
        for s in &all {
            assert!(s.name.starts_with("h2c-"), "{}", s.name);
            assert!(matches!(s.kind, super::Kind::Direct | super::Kind::Cluster));
        }
        let mut names: Vec<_> = all.iter().map(|s| s.name).collect();
        names.dedup();
        assert_eq!(names.len(), all.len());
    }

    #[tokio::test]
    async fn an_http1_only_server_does_not_pass_for_h2c() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 64];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 505 HTTP Version Not Supported\r\ncontent-length: 0\r\n\r\n",
                    )
                    .await;
            }
        });
        let err = super::answers_h2c(addr).await.unwrap_err();
        assert!(err.contains(&addr.to_string()), "{err}");
    }
}
