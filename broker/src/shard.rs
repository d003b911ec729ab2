//! One shard: a glommio executor pinned to a core, with its own listener on the broker's port.
//!
//! Every shard accepts connections itself (`SO_REUSEPORT`: the kernel spreads them) and serves them
//! on its executor; nothing is shared between shards but the stop flag. A shard never busy-spins
//! unless `spin_before_park_us` asks for it.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};

use crate::config::BrokerConfig;
use crate::connection;

/// How often idle loops look at the stop flag.
pub(crate) const STOP_POLL: Duration = Duration::from_millis(50);

/// What a shard needs to serve requests.
pub(crate) struct ShardContext {
    pub id: usize,
    pub config: BrokerConfig,
    pub stopping: Arc<AtomicBool>,
}

impl ShardContext {
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}

/// Starts shard `id` on its own thread. It binds `listen`, reports the bound address on `bound`,
/// serves until `stopping` is set, then finishes its connections' in-flight requests and returns.
pub(crate) fn spawn(
    id: usize,
    config: BrokerConfig,
    listen: SocketAddr,
    stopping: Arc<AtomicBool>,
    bound: std::sync::mpsc::Sender<Result<SocketAddr, String>>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = LocalExecutorBuilder::new(Placement::Fixed(id % cores))
        .name(&format!("shard-{id}"))
        .io_memory(config.io_memory_bytes);
    if config.spin_before_park_us > 0 {
        builder = builder.spin_before_park(Duration::from_micros(config.spin_before_park_us));
    }
    std::thread::Builder::new()
        .name(format!("shard-{id}"))
        .spawn(move || {
            let executor = match builder.make() {
                Ok(e) => e,
                Err(e) => {
                    let _ = bound.send(Err(format!("starting shard {id}: {e}")));
                    return;
                }
            };
            executor.run(async move {
                let listener = match TcpListener::bind(listen) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = bound.send(Err(format!("shard {id} binding {listen}: {e}")));
                        return;
                    }
                };
                let addr = listener.local_addr().unwrap_or(listen);
                let _ = bound.send(Ok(addr));
                let ctx = Rc::new(ShardContext {
                    id,
                    config,
                    stopping,
                });
                serve(listener, ctx).await;
            });
        })
}

/// Accepts until stopping, then waits for every connection task to finish.
async fn serve(listener: TcpListener, ctx: Rc<ShardContext>) {
    let open = Rc::new(Cell::new(0usize));
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            while !ctx.stopping() {
                glommio::timer::sleep(STOP_POLL).await;
            }
            None
        })
        .await;
        match accepted {
            None => break,
            Some(Ok(stream)) => {
                let (ctx, open) = (ctx.clone(), open.clone());
                open.set(open.get() + 1);
                glommio::spawn_local(async move {
                    connection::serve(stream, ctx).await;
                    open.set(open.get() - 1);
                })
                .detach();
            }
            Some(Err(e)) => {
                // Running out of file descriptors or a reset during accept: keep serving.
                tracing::warn!(shard = ctx.id, error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    drop(listener);
    // Connections notice the stop flag between requests and close; in-flight requests finish.
    while open.get() > 0 {
        glommio::timer::sleep(STOP_POLL).await;
    }
    tracing::info!(shard = ctx.id, "shard stopped");
}
