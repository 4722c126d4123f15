//! One worker: a thread pinned to a core, running its own single-threaded
//! runtime, its own accept sockets and every connection it accepted.
//!
//! Workers share nothing on the hot path. They hear from the control side
//! only through [`Command`]s: apply a new snapshot, or stop accepting.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::TcpListener as StdListener;
use std::rc::Rc;
use std::sync::Arc;

use futures_channel::{mpsc, oneshot};
use futures_util::StreamExt;

use crate::bind::ListenKey;
use crate::conn::ListenerCtx;
use crate::listener::{CurrentCtx, accept_loop};
use crate::runtime::{self, IoEngine, IoEngineChoice, Runtime, Task};
use crate::snapshot::Snapshot;

/// A request from the control side to one worker.
pub(crate) enum Command {
    /// Run `snapshot`: keep listeners whose key is unchanged (with the new
    /// config), open the new ones from `sockets`, close the others.
    Apply {
        snapshot: Arc<Snapshot>,
        sockets: HashMap<ListenKey, Vec<StdListener>>,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// Close every listening socket; established connections carry on.
    StopAccepting { done: oneshot::Sender<()> },
}

/// What a worker reports once its runtime is up.
pub(crate) struct Started {
    pub engine: IoEngine,
    pub fallback_reason: Option<String>,
}

struct RunningListener {
    current: CurrentCtx,
    /// Dropping a task cancels its accept loop and closes its socket.
    _accept: Vec<Task<()>>,
}

/// The worker thread's body.
pub(crate) fn run(
    core: usize,
    cpu: Option<usize>,
    choice: IoEngineChoice,
    commands: mpsc::UnboundedReceiver<Command>,
    started: std::sync::mpsc::Sender<std::io::Result<Started>>,
) {
    if let Some(cpu) = cpu {
        pin_to_cpu(cpu);
    }
    let built = match Runtime::build(choice) {
        Ok(b) => b,
        Err(e) => {
            let _ = started.send(Err(e));
            return;
        }
    };
    let _ = started.send(Ok(Started {
        engine: built.runtime.engine(),
        fallback_reason: built.fallback_reason,
    }));
    built.runtime.block_on(serve_commands(core, commands));
}

async fn serve_commands(core: usize, mut commands: mpsc::UnboundedReceiver<Command>) {
    let mut listeners: HashMap<ListenKey, RunningListener> = HashMap::new();
    while let Some(command) = commands.next().await {
        match command {
            Command::Apply {
                snapshot,
                mut sockets,
                done,
            } => {
                let result = apply(core, &snapshot, &mut sockets, &mut listeners);
                let _ = done.send(result);
            }
            Command::StopAccepting { done } => {
                listeners.clear();
                crate::drain::start();
                let _ = done.send(());
            }
        }
    }
}

fn apply(
    core: usize,
    snapshot: &Snapshot,
    sockets: &mut HashMap<ListenKey, Vec<StdListener>>,
    listeners: &mut HashMap<ListenKey, RunningListener>,
) -> Result<(), String> {
    let mut next = HashMap::with_capacity(snapshot.listeners.len());
    for config in &snapshot.listeners {
        let key = ListenKey::of(config);
        let ctx = Rc::new(ListenerCtx {
            config: config.clone(),
            core,
        });
        if let Some(running) = listeners.remove(&key) {
            *running.current.borrow_mut() = ctx;
            next.insert(key, running);
            continue;
        }
        let Some(group) = sockets.remove(&key).filter(|g| !g.is_empty()) else {
            return Err(format!(
                "listener `{}`: no socket was bound for worker {core}",
                config.name
            ));
        };
        let current: CurrentCtx = Rc::new(RefCell::new(ctx));
        let mut accept = Vec::with_capacity(group.len());
        for socket in group {
            let socket = runtime::listener_from_std(socket)
                .map_err(|e| format!("listener `{}`: cannot register socket: {e}", config.name))?;
            accept.push(runtime::spawn(accept_loop(socket, current.clone())));
        }
        next.insert(
            key,
            RunningListener {
                current,
                _accept: accept,
            },
        );
    }
    // Whatever is left was removed from the config: dropping closes it.
    *listeners = next;
    Ok(())
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; the calls only read it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            tracing::warn!(cpu, error = %std::io::Error::last_os_error(), "could not pin worker to its cpu");
        }
    }
}

/// The CPUs this process may run on (respects `taskset` and cgroups).
pub(crate) fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data filled in by the kernel.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|c| libc::CPU_ISSET(*c, &set))
            .collect()
    }
}
