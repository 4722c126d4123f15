//! The phases of one request, in the order they run. This file is the map:
//! each phase is one step below, and later features (route matching,
//! authorization, rate limits, faults, retries) slot in where their step
//! is named.
//!
//! 1. **limits**: the head was read within `request_headers_timeout` and
//!    checked against the size and smuggling rules (`codec::h1`), before
//!    this runs;
//! 2. **method**: CONNECT is refused (405) until tunnelling is configured;
//! 3. **route** (`route.rs`): the listener's route table finds the first
//!    route whose match holds; no route: 404, flag `NR`;
//! 4. **rate limits** (`ratelimit.rs`): the listener's before routing, the
//!    route's after it; over the limit: 429, flag `RL`;
//!    **fault** (`fault.rs`): a forwarding route's fault filter may delay
//!    the request (flag `DI`; the delay spends the route timeout) or answer
//!    it with its error status (flag `FI`); *(route authorization: later)*;
//! 5. **answer or split**: a `redirect` or `direct_response` route answers
//!    here (`direct.rs`); a forwarding route picks its cluster (the split,
//!    sticky or drawn);
//! 6. **breakers**: the cluster's `max_requests` (503, flag `UO`);
//! 7. **upstream exchange** (`exchange.rs`): a request the route may
//!    retry is read whole (up to 64 KiB) -> the request head is written
//!    with the route's rewrites and request header operations, and a copy
//!    goes to the mirror (`mirror.rs`, fire and forget) -> pick an
//!    endpoint (core's balancer, health, ejection, panic mode; one not
//!    tried yet on a retry) -> pooled or new connection (`max_connections`,
//!    `max_pending_requests`, connect timeout, failover, TLS origination)
//!    -> send head and body -> response head within the route `timeout`,
//!    `per_try_timeout` and `idle_timeout` -> a failure or status the
//!    retry policy names, with the budget and `max_retries` agreeing
//!    (`retry.rs`): back off and go again from the pick -> response header
//!    operations -> stream the body back -> pool the connection when
//!    reusable;
//! 8. **record** (`record.rs`): metrics (per listener, route and cluster)
//!    and one access-log line, once.

use ringmesh_core::protocol::ListenerRef;
use ringmesh_core::rt;
use ringmesh_core::upstream::RequestSlot;

use crate::codec::h1::{Method, RequestHead};
use crate::config::HttpListener;
use crate::exchange::Leg;
use crate::local_reply::ResponseFlag;
use crate::metrics::Rejection;
use crate::record::RequestRecord;
use crate::route::Action;
use crate::route::matcher::RequestView;
use crate::server::{After, Client};

/// Runs one request through its phases; says what the connection does next.
pub(crate) async fn run(
    c: &mut Client,
    _listener: &ListenerRef,
    http: &HttpListener,
    head: &RequestHead,
    record: &mut RequestRecord,
) -> After {
    let core = c.facts.core;
    // 2. method
    if head.method == Method::Connect {
        http.stats.reject(core, Rejection::Connect);
        return refuse(c, head, record, 405, "CONNECT is not supported").await;
    }
    // 3. listener rate limit, then route
    if let Some(limit) = &http.rate_limit {
        if let Err(wait) = limit.take(limit_key(c, limit)) {
            return limited(c, head, record, limit, wait).await;
        }
    }
    let req = RequestView::new(&c.buf, head, &c.fields);
    let Some((index, route)) = http.routes.find(&req) else {
        return crate::exchange::local(c, head, record, ResponseFlag::NoRoute, None, true).await;
    };
    record.route = Some(index);
    // 4. route rate limit
    if let Some(limit) = &route.rate_limit {
        if let Err(wait) = limit.take(limit_key(c, limit)) {
            return limited(c, head, record, limit, wait).await;
        }
    }
    // 5. answer or split
    let forward = match &route.action {
        Action::Forward(f) => f,
        Action::Redirect(_) | Action::Direct(_) => {
            return crate::direct::answer(c, http, route, head, record).await;
        }
    };
    // 4. fault
    let mut timeout = forward.timeout;
    if let Some(fault) = &forward.fault {
        let injected = fault.draw(&req);
        let counters = fault.stats.cores.get(core);
        if let Some(delay) = injected.delay {
            counters.delays.inc();
            record.flag = Some(ResponseFlag::DelayInjected);
            rt::sleep(delay.min(timeout)).await;
            if delay >= timeout {
                let flag = ResponseFlag::UpstreamTimeout;
                return crate::exchange::local(c, head, record, flag, None, true).await;
            }
            timeout -= delay;
        }
        if let Some(status) = injected.abort {
            counters.aborts.inc();
            return abort(c, head, record, status).await;
        }
    }
    let req = RequestView::new(&c.buf, head, &c.fields);
    let pick = forward.pick(&req);
    record.target = Some(pick);
    let target = &forward.targets[pick].target;
    // 6. breakers
    let Some(_active) = RequestSlot::acquire(&target.cluster, core) else {
        return crate::exchange::local(c, head, record, ResponseFlag::UpstreamOverflow, None, true)
            .await;
    };
    let gauge = &http.stats.cores.get(core).active;
    gauge.add(1);
    // 7. upstream exchange
    let leg = Leg {
        route,
        forward,
        target,
        stats: &forward.targets[pick].stats,
        timeout,
    };
    let after = crate::exchange::forward(c, http, leg, head, record).await;
    gauge.add(-1);
    after
}

/// The request's key for a keyed limit (empty for an unkeyed one, and for
/// requests without the identity or header: they share a bucket).
fn limit_key<'c>(c: &'c Client, limit: &crate::ratelimit::RateLimit) -> &'c [u8] {
    use crate::ratelimit::LimitKey;
    match &limit.key {
        None => b"",
        Some(LimitKey::Client) => c.peer_ip.as_bytes(),
        Some(LimitKey::Identity) => c.facts.identity.as_deref().unwrap_or("").as_bytes(),
        Some(LimitKey::Header(name)) => c
            .fields
            .iter()
            .find(|f| f.name.get(&c.buf).eq_ignore_ascii_case(name))
            .map_or(&b""[..], |f| f.value.get(&c.buf)),
    }
}

/// Answers a request over a rate limit: 429, flag `RL`.
async fn limited(
    c: &mut Client,
    head: &RequestHead,
    record: &mut RequestRecord,
    limit: &crate::ratelimit::RateLimit,
    wait: std::time::Duration,
) -> After {
    limit
        .state
        .limited
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (whole, close) = c.own_answer_plan(head, true);
    let mut out = crate::buffers::take();
    crate::ratelimit::write_limited(&mut out, limit, wait, close);
    record.status = 429;
    record.flag = Some(ResponseFlag::RateLimited);
    c.send_own_answer(out, whole, close).await
}

/// Answers a request with the fault filter's status (flag `FI`).
async fn abort(
    c: &mut Client,
    head: &RequestHead,
    record: &mut RequestRecord,
    status: u16,
) -> After {
    let (whole, close) = c.own_answer_plan(head, true);
    let mut out = crate::buffers::take();
    let flag = ResponseFlag::FaultInjected;
    crate::local_reply::write(&mut out, status, "fault filter abort", flag.as_str(), close);
    record.status = status;
    record.flag = Some(flag);
    c.send_own_answer(out, whole, close).await
}

/// Answers a request the proxy will not forward, then closes.
async fn refuse(
    c: &mut Client,
    _head: &RequestHead,
    record: &mut RequestRecord,
    status: u16,
    text: &str,
) -> After {
    let flag = ResponseFlag::DownstreamProtocolError;
    let mut out = crate::buffers::take();
    crate::local_reply::write(&mut out, status, text, flag.as_str(), true);
    record.status = status;
    record.flag = Some(flag);
    let (res, out) = c.stream.write_all(out).await;
    if res.is_ok() {
        c.bytes.add_sent(out.len());
    }
    crate::buffers::give(out);
    After::Close
}
