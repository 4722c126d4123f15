//! What the walkthrough has changed so far, kept in the demo's directory,
//! and the `review` and `recommendation` services it makes: every step
//! edits this state and pushes the two services through the control
//! plane (`PUT /mesh/services/{name}`), so steps compose and `reset`
//! returns to the start.

use serde_json::json;

/// The walkthrough's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Walkthrough {
    /// review's sidecars abort half of the requests with 503.
    pub fault: bool,
    /// Callers retry review's 5xx (with a retry budget).
    pub retry: bool,
    /// review's sidecars delay half of the requests by 2s.
    pub delay: bool,
    /// Calls to review time out after 1s.
    pub timeout: bool,
    /// Percent of calls to v2 (review and recommendation).
    pub v2_percent: u32,
    /// Requests with `x-canary: true` go to v2.
    pub header_canary: bool,
}

impl Walkthrough {
    /// As stored.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "fault": self.fault, "retry": self.retry, "delay": self.delay,
            "timeout": self.timeout, "v2_percent": self.v2_percent,
            "header_canary": self.header_canary,
        })
    }

    /// From what was stored (defaults for anything missing).
    pub fn from_json(v: &serde_json::Value) -> Walkthrough {
        let flag = |k: &str| v.get(k).and_then(|x| x.as_bool()).unwrap_or(false);
        Walkthrough {
            fault: flag("fault"),
            retry: flag("retry"),
            delay: flag("delay"),
            timeout: flag("timeout"),
            v2_percent: v
                .get("v2_percent")
                .and_then(|x| x.as_u64())
                .map(|p| p.min(100) as u32)
                .unwrap_or(0),
            header_canary: flag("header_canary"),
        }
    }

    fn routes(&self, service: &str, with_policy: bool) -> serde_json::Value {
        let mut routes = Vec::new();
        let mut forward = |name: &str, m: serde_json::Value, action: (&str, serde_json::Value)| {
            let mut r = json!({ "name": name });
            if !m.is_null() {
                r["match"] = m;
            }
            r[action.0] = action.1;
            if with_policy {
                if self.retry {
                    r["retries"] = json!({ "attempts": 7, "on": ["5xx"] });
                }
                if self.timeout {
                    r["timeout"] = json!("1s");
                }
            }
            routes.push(r);
        };
        if self.header_canary {
            forward(
                "canary",
                json!({ "headers": { "x-canary": { "exact": "true" } } }),
                ("cluster", json!(format!("{service}-v2"))),
            );
        }
        match self.v2_percent {
            0 => forward(
                "v1",
                serde_json::Value::Null,
                ("cluster", json!(format!("{service}-v1"))),
            ),
            100 => forward(
                "v2",
                serde_json::Value::Null,
                ("cluster", json!(format!("{service}-v2"))),
            ),
            p => forward(
                "split",
                serde_json::Value::Null,
                (
                    "split",
                    json!([
                        { "cluster": format!("{service}-v1"), "weight": 100 - p },
                        { "cluster": format!("{service}-v2"), "weight": p },
                    ]),
                ),
            ),
        }
        json!(routes)
    }

    /// The `review` service as `PUT /mesh/services/review` takes it.
    pub fn review(&self) -> serde_json::Value {
        let mut s = json!({
            "port": 9082,
            "versions": ["v1", "v2"],
            "authz": { "allow": ["product"] },
            "routes": self.routes("review", true),
        });
        let mut fault = serde_json::Map::new();
        if self.fault {
            fault.insert("abort".into(), json!({ "percent": 50, "status": 503 }));
        }
        if self.delay {
            fault.insert("delay".into(), json!({ "percent": 50, "fixed": "2s" }));
        }
        if !fault.is_empty() {
            s["inbound_fault"] = serde_json::Value::Object(fault);
        }
        if self.retry {
            s["traffic"] =
                json!({ "retry_budget": { "retry_ratio": 1.0, "min_retries_per_second": 50 } });
        }
        s
    }

    /// The `recommendation` service.
    pub fn recommendation(&self) -> serde_json::Value {
        json!({
            "port": 9081,
            "versions": ["v1", "v2"],
            "authz": { "allow": ["product"] },
            "routes": self.routes("recommendation", false),
        })
    }
}
