//! The agent's HTTP rules at their boundaries, against the local rustls stand-in: a reply is
//! complete only when its end is known, and its body is capped.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use imagegen_firstboot::http::{self, HttpError, Trust};

/// GET `/x` from a stand-in that writes `reply` and then ends as `end` says.
fn get_from(reply: &'static [u8], end: Replied) -> Result<http::Response, HttpError> {
    let end = std::sync::Mutex::new(Some(end));
    let server = FakeK3s::start_with(move |_, _, tls| {
        let _ = tls.write_all(reply);
        end.lock().unwrap().take().unwrap_or(Replied::Complete)
    });
    http::get(
        &format!("{}/x", server.url),
        &[],
        &Trust::AnyCertificate,
        Duration::from_secs(5),
    )
}

#[test]
fn whole_replies_are_read() {
    let r = get_from(
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npong",
        Replied::Complete,
    )
    .unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"pong"[..]));
    let r = get_from(
        b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n2\r\npo\r\n2\r\nng\r\n0\r\n\r\n",
        Replied::Cut,
    )
    .unwrap();
    assert_eq!((r.status, r.body.as_slice()), (404, &b"pong"[..]));
}

#[test]
fn replies_cut_short_are_errors() {
    for (reply, end) in [
        (
            &b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\npong"[..],
            Replied::Cut,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\npong\r\n",
            Replied::Cut,
        ),
        // No length and no chunks: over TLS, even a close_notify after it is refused, since
        // the body could not be told from a cut one had the close_notify been missing.
        (b"HTTP/1.1 200 OK\r\n\r\npong", Replied::Complete),
        (b"HTTP/1.1 200 OK\r\n\r\npong", Replied::Cut),
    ] {
        let e = get_from(reply, end).unwrap_err();
        assert!(
            matches!(e, HttpError::Truncated { .. }),
            "{}: {e}",
            String::from_utf8_lossy(reply)
        );
    }
}

/// ureq's limit refuses a body that reaches it, so the cap is "under 1 MiB".
#[test]
fn bodies_of_one_mib_are_refused() {
    let reply = |len: usize| -> &'static [u8] {
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n");
        [head.as_bytes(), &vec![b'x'; len]].concat().leak()
    };
    match get_from(reply(1 << 20), Replied::Complete) {
        Err(HttpError::Request {
            source: ureq::Error::BodyExceedsLimit(_),
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    let r = get_from(reply((1 << 20) - 1), Replied::Complete).unwrap();
    assert_eq!(r.body.len(), (1 << 20) - 1);
}
