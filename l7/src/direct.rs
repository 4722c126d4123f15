//! Answers a route gives itself: redirects (`redirect`) and direct
//! responses (`direct_response`). The route's response header operations
//! apply to them. A request body is not forwarded: one that is all in the
//! buffer is skipped and the connection kept; a longer one is not read,
//! and the connection closes after the answer (with a lingering close), as
//! for the proxy's other own answers.

use crate::buffers;
use crate::codec::h1::{Method, RequestHead};
use crate::codec::write::push_decimal;
use crate::config::HttpListener;
use crate::local_reply::reason;
use crate::record::RequestRecord;
use crate::rewrite::replace_prefix;
use crate::route::matcher::{RequestView, split_port};
use crate::route::{Action, Redirect, RedirectPath, Route};
use crate::server::{After, Client};

/// Answers `head` as `route` says (its action is a redirect or a direct
/// response).
pub(crate) async fn answer(
    c: &mut Client,
    http: &HttpListener,
    route: &Route,
    head: &RequestHead,
    record: &mut RequestRecord,
) -> After {
    let (whole, close) = c.own_answer_plan(head, true);
    let mut out = buffers::take();
    let req = RequestView::new(&c.buf, head, &c.fields);
    let status = write(&mut out, http, route, head, &req, close);
    record.status = status;
    c.send_own_answer(out, whole, close).await
}

/// Writes the answer `route` gives (a redirect or a direct response) as
/// an HTTP/1.1 response; returns its status. HTTP/2 streams translate it.
pub(crate) fn write(
    out: &mut Vec<u8>,
    http: &HttpListener,
    route: &Route,
    head: &RequestHead,
    req: &RequestView<'_>,
    close: bool,
) -> u16 {
    match &route.action {
        Action::Redirect(r) => {
            write_redirect(out, r, route, req, http.tls, close);
            r.status
        }
        Action::Direct(d) => {
            out.extend_from_slice(b"HTTP/1.1 ");
            push_decimal(out, u64::from(d.status));
            out.push(b' ');
            out.extend_from_slice(reason(d.status).as_bytes());
            out.extend_from_slice(b"\r\n");
            let bodyless = matches!(d.status, 204 | 304);
            if !bodyless {
                // A route may set its own content type.
                if !route.response_headers.drops(b"content-type") {
                    out.extend_from_slice(b"content-type: text/plain\r\n");
                }
                out.extend_from_slice(b"content-length: ");
                push_decimal(out, d.body.len() as u64);
                out.extend_from_slice(b"\r\n");
            }
            finish_head(out, route, close);
            if head.method != Method::Head && !bodyless {
                out.extend_from_slice(&d.body);
            }
            d.status
        }
        // Not reached: forwarding routes go upstream.
        Action::Forward(_) => 500,
    }
}

/// The route's response operations, `connection: close`, the empty line.
fn finish_head(out: &mut Vec<u8>, route: &Route, close: bool) {
    route.response_headers.write_appended(out);
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes a redirect: `location` is the request's URL with the parts the
/// redirect names replaced.
fn write_redirect(
    out: &mut Vec<u8>,
    r: &Redirect,
    route: &Route,
    req: &RequestView<'_>,
    tls: bool,
    close: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(r.status));
    out.push(b' ');
    out.extend_from_slice(reason(r.status).as_bytes());
    out.extend_from_slice(b"\r\n");
    if !route.response_headers.drops(b"location") {
        out.extend_from_slice(b"location: ");
        location(out, r, route, req, tls);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"content-length: 0\r\n");
    finish_head(out, route, close);
}

/// Appends the redirect's target URL.
pub(crate) fn location(
    out: &mut Vec<u8>,
    r: &Redirect,
    route: &Route,
    req: &RequestView<'_>,
    tls: bool,
) {
    let start = out.len();
    let own_scheme = if tls { "https" } else { "http" };
    let scheme = r.scheme.unwrap_or(own_scheme);
    let (req_host, req_port) = split_port(req.host);
    let port = match r.port {
        Some(p) => Some(p),
        None if scheme != own_scheme => None,
        None => req_port,
    };
    out.extend_from_slice(scheme.as_bytes());
    out.extend_from_slice(b"://");
    match &r.host {
        Some(h) => out.extend_from_slice(h.as_bytes()),
        None => out.extend_from_slice(req_host),
    }
    let default_port = if scheme == "https" { 443 } else { 80 };
    if let Some(p) = port.filter(|p| *p != default_port) {
        out.push(b':');
        push_decimal(out, u64::from(p));
    }
    // Without a host (HTTP/1.0 without `Host`) the location is relative.
    if r.host.is_none() && req_host.is_empty() {
        out.truncate(start);
    }
    match &r.path {
        Some(RedirectPath::Path(p)) => out.extend_from_slice(p.as_bytes()),
        Some(RedirectPath::Prefix(p)) => {
            replace_prefix(out, &route.matcher, p.as_bytes(), req.path)
        }
        None if req.path.is_empty() => out.push(b'/'),
        None => out.extend_from_slice(req.path),
    }
    if !r.strip_query && !req.query.is_empty() {
        out.push(b'?');
        out.extend_from_slice(req.query);
    }
}
