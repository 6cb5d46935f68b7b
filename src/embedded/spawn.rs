//! Spawning server processes that never outlive this process.
//!
//! Linux delivers a parent-death signal when the *thread* that forked a child exits, not the
//! process. Test threads and async worker threads come and go, so children are forked from
//! one keeper thread that lives as long as the process: when the process dies, however it
//! dies (even SIGKILL), the kernel sends the child SIGQUIT, PostgreSQL's immediate shutdown.

use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

type Request = (Command, mpsc::Sender<std::io::Result<Child>>);

static KEEPER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();

fn keeper() -> &'static Mutex<mpsc::Sender<Request>> {
    KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("ds-sync-child-keeper".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                // The sender lives in a static, so this loop only ends with the process.
            })
            .expect("spawning the child keeper thread");
        Mutex::new(tx)
    })
}

/// Spawns `cmd` so that it receives SIGQUIT when this process exits.
#[allow(unsafe_code)]
pub(super) fn spawn_tied(mut cmd: Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and the closure touches no shared state.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    keeper()
        .lock()
        .map_err(|_| std::io::Error::other("child keeper lock poisoned"))?
        .send((cmd, reply_tx))
        .map_err(|_| std::io::Error::other("child keeper thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("child keeper thread is gone"))?
}
