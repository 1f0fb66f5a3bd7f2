//! The composition of one log router: buffer, pipeline, inputs, outputs and the admin server, started and stopped together.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::LogRouterError;
use crate::buffer::{Buffer, BufferOptions, DEFAULT_IN_FLIGHT_BYTES, DEFAULT_SEGMENT_BYTES};
use crate::config::{DEFAULT_SCRATCH_LIMIT, InputKind, LogRouterConfig};
use crate::forward::budget::FrameBudget;
use crate::forward::decode::Limits;
use crate::forward::server::{self, ForwardSettings};
use crate::input::InputCtx;
use crate::input::line::{LineOptions, LineSink, Source};
use crate::metrics::Metrics;
use crate::output::{OutputTask, Sink};
use crate::pipeline::{EcsMetadata, Pipeline};

/// A started log router.
pub struct LogRouter {
    handle: LogRouterHandle,
    forward_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    unix_paths: Vec<PathBuf>,
    inputs: Vec<JoinHandle<()>>,
    outputs: Vec<JoinHandle<()>>,
    admin: Option<JoinHandle<()>>,
    stop_inputs: watch::Sender<bool>,
    drain: watch::Sender<bool>,
    grace: std::time::Duration,
    scratch: Option<PathBuf>,
}

/// A cheap handle for feeding container pipes into a running router.
#[derive(Clone, Debug)]
pub struct LogRouterHandle {
    pipeline: Arc<Pipeline>,
    buffer: Buffer,
    metrics: Metrics,
}

// === impl LogRouterHandle ===

impl LogRouterHandle {
    /// A sink for one container stream; records get `source` (and the container fields in `opts`).
    /// The input is counted under the metric label `line.<tag>`.
    pub fn line_input(&self, tag: &str, source: Source, opts: LineOptions) -> LineSink {
        let ctx = Arc::new(InputCtx {
            name: format!("line.{tag}"),
            pipeline: self.pipeline.clone(),
            buffer: self.buffer.clone(),
            metrics: self.metrics.clone(),
            durable: false,
        });
        LineSink::new(ctx, tag.to_owned(), Some(source), opts)
    }
}

/// Opts the process out of transparent huge pages: a binary whose process is the router
/// (`skiff logrouter`) calls it first thing, before its runtime allocates. Not
/// [`LogRouter::start`]: the setting is the whole process's and its children inherit it
/// across exec — the runner, which hosts routers in its own process, would pass it on to
/// every task it starts.
///
/// Why: where the kernel backs heaps with huge pages (THP `always`, or an allocator that asks
/// for them, as mimalloc does), every 2 MiB region a thread touches once becomes resident
/// whole: measured with mimalloc, 17 MiB instead of 9 at idle and 50 MiB instead of 30 under
/// many clients, for the same bytes in use. The router bounds what it holds; with 4 KiB pages
/// its RSS follows that bound.
pub fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        debug!(error = %e, "cannot opt out of transparent huge pages");
    }
}

// === impl LogRouter ===

impl LogRouter {
    /// Opens the buffer (recovering it), binds every listener and starts delivering.
    pub async fn start(
        cfg: LogRouterConfig,
        metadata: EcsMetadata,
        registry: &prometheus::Registry,
    ) -> Result<LogRouter, LogRouterError> {
        let metrics = Metrics::register(registry)?;
        let (dir, durable, scratch) = match &cfg.service.storage_path {
            Some(p) => (p.clone(), true, None),
            None => {
                let p = std::env::temp_dir().join(format!(
                    "skiff-logrouter-{}-{:08x}",
                    std::process::id(),
                    rand::random::<u32>()
                ));
                (p.clone(), false, Some(p))
            }
        };
        let limit = match (cfg.service.storage_total_limit, &scratch) {
            (0, Some(_)) => {
                // no disk buffer configured: bound the scratch one like Fluent Bit bounds memory
                let mem: u64 = cfg.inputs.iter().filter_map(|i| i.mem_buf_limit).sum();
                if mem > 0 { mem } else { DEFAULT_SCRATCH_LIMIT }
            }
            (l, _) => l,
        };
        let segment_bytes = if limit > 0 {
            DEFAULT_SEGMENT_BYTES.min((limit / 4).max(4096))
        } else {
            DEFAULT_SEGMENT_BYTES
        };
        let (buffer, recovery) = Buffer::open(
            BufferOptions {
                dir,
                segment_bytes,
                max_bytes: limit,
                sync_always: cfg.service.storage_sync_full,
                durable,
                in_flight_bytes: DEFAULT_IN_FLIGHT_BYTES,
            },
            metrics.clone(),
        )?;
        if recovery.corrupt_bytes > 0 {
            warn!(
                bytes = recovery.corrupt_bytes,
                "skipped corrupt buffer data during recovery"
            );
        }
        let pipeline = Pipeline::new(
            cfg.filters.clone(),
            cfg.enrich_ecs_metadata.then_some(&metadata),
            metrics.clone(),
        );
        let (stop_inputs, stop_rx) = watch::channel(false);
        let (drain, drain_rx) = watch::channel(false);

        // outputs first: their cursors must be registered before anything can be deleted
        let mut outputs = Vec::new();
        for o in &cfg.outputs {
            let task = OutputTask {
                reader: buffer.reader(&o.name)?,
                sink: Sink::new(&o.kind),
                cfg: o.clone(),
                metrics: metrics.clone(),
                retry_base: cfg.service.retry_base,
                retry_cap: cfg.service.retry_cap,
            };
            let name = o.name.clone();
            let drain = drain_rx.clone();
            outputs.push(tokio::spawn(async move {
                if let Err(e) = task.run(drain).await {
                    error!(output = %name, error = %e, "output stopped");
                }
            }));
        }

        let mut inputs = Vec::new();
        // spare frame memory an idle router does not need goes back to the allocator
        inputs.push(tokio::spawn(buffer.spares().clone().trim_every_interval()));
        let mut forward_addr = None;
        // one budget for every forward input: it bounds the process, not a connection
        let frame_budget = FrameBudget::new(cfg.service.frames_mem_limit);
        let mut unix_paths = Vec::new();
        for i in &cfg.inputs {
            let ctx = Arc::new(InputCtx {
                name: i.name.clone(),
                pipeline: pipeline.clone(),
                buffer: buffer.clone(),
                metrics: metrics.clone(),
                durable: i.durable,
            });
            match &i.kind {
                InputKind::Forward(f) => {
                    let settings = Arc::new(ForwardSettings {
                        limits: Limits {
                            max_frame: f.buffer_max_size,
                            max_decompressed: f.buffer_max_size,
                            max_record: f.buffer_max_size,
                        },
                        shared_key: f.shared_key.clone(),
                        self_hostname: f.self_hostname.clone(),
                        tag_override: i.tag.clone(),
                        tag_prefix: f.tag_prefix.clone(),
                        budget: frame_budget.clone(),
                        max_connections: f.max_connections,
                    });
                    if let Some(port) = f.port {
                        let addr = SocketAddr::new(f.listen, port);
                        let l = TcpListener::bind(addr).await.map_err(|source| {
                            LogRouterError::Bind {
                                addr: addr.to_string(),
                                source,
                            }
                        })?;
                        let local = l.local_addr().map_err(|source| LogRouterError::Bind {
                            addr: addr.to_string(),
                            source,
                        })?;
                        forward_addr.get_or_insert(local);
                        info!(input = %i.name, addr = %local, "forward input listening");
                        inputs.push(tokio::spawn(server::serve_tcp(
                            l,
                            settings.clone(),
                            ctx.clone(),
                            stop_rx.clone(),
                        )));
                    }
                    if let Some(path) = &f.unix_path {
                        let _ = std::fs::remove_file(path);
                        let bind_err = |source| LogRouterError::Bind {
                            addr: path.display().to_string(),
                            source,
                        };
                        let l = UnixListener::bind(path).map_err(bind_err)?;
                        if let Some(mode) = f.unix_perm {
                            use std::os::unix::fs::PermissionsExt;
                            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                                .map_err(bind_err)?;
                        }
                        info!(input = %i.name, path = %path.display(), "forward input listening");
                        unix_paths.push(path.clone());
                        inputs.push(tokio::spawn(server::serve_unix(
                            l,
                            path.clone(),
                            settings,
                            ctx,
                            stop_rx.clone(),
                        )));
                    }
                }
                InputKind::Tcp(t) => {
                    let addr = SocketAddr::new(t.listen, t.port);
                    let l =
                        TcpListener::bind(addr)
                            .await
                            .map_err(|source| LogRouterError::Bind {
                                addr: addr.to_string(),
                                source,
                            })?;
                    let tag = i.tag.clone().unwrap_or_else(|| i.name.clone());
                    let opts = LineOptions {
                        max_line_bytes: t.buffer_size,
                        parse_json: t.json,
                        ..LineOptions::default()
                    };
                    inputs.push(tokio::spawn(serve_lines(
                        l,
                        ctx,
                        tag,
                        opts,
                        stop_rx.clone(),
                    )));
                }
                InputKind::Stdin => {
                    let tag = i.tag.clone().unwrap_or_else(|| i.name.clone());
                    // like Fluent Bit's stdin: JSON lines become records
                    let opts = LineOptions {
                        parse_json: true,
                        ..LineOptions::default()
                    };
                    let sink = LineSink::new(ctx, tag, None, opts);
                    inputs.push(tokio::spawn(async move {
                        if let Err(e) = sink.feed(tokio::io::stdin()).await {
                            warn!(error = %e, "stdin input stopped");
                        }
                    }));
                }
            }
        }

        let mut metrics_addr = None;
        let admin = if cfg.service.http_server {
            let addr = SocketAddr::new(cfg.service.http_listen, cfg.service.http_port);
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| LogRouterError::Bind {
                    addr: addr.to_string(),
                    source,
                })?;
            metrics_addr = l.local_addr().ok();
            Some(tokio::spawn(crate::admin::run(
                l,
                registry.clone(),
                stop_rx.clone(),
            )))
        } else {
            None
        };

        Ok(LogRouter {
            handle: LogRouterHandle {
                pipeline,
                buffer,
                metrics,
            },
            forward_addr,
            metrics_addr,
            unix_paths,
            inputs,
            outputs,
            admin,
            stop_inputs,
            drain,
            grace: cfg.service.grace,
            scratch,
        })
    }

    /// The first forward TCP listener's bound address.
    pub fn forward_addr(&self) -> Option<SocketAddr> {
        self.forward_addr
    }

    /// The metrics server's bound address.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The forward unix socket paths.
    pub fn unix_paths(&self) -> &[PathBuf] {
        &self.unix_paths
    }

    /// A handle for line inputs that outlives `run(self)`'s move.
    pub fn handle(&self) -> LogRouterHandle {
        self.handle.clone()
    }

    /// Shortcut for `handle().line_input(..)`.
    pub fn line_input(&self, tag: &str, source: Source, opts: LineOptions) -> LineSink {
        self.handle.line_input(tag, source, opts)
    }

    /// Runs until `shutdown`, then stops the inputs and lets outputs deliver for up to `Grace`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), LogRouterError> {
        shutdown.await;
        info!("log router stopping");
        let _ = self.stop_inputs.send(true);
        for i in self.inputs {
            i.abort();
            let _ = i.await;
        }
        let _ = self.drain.send(true);
        let deadline = tokio::time::Instant::now() + self.grace;
        for o in self.outputs {
            let abort = o.abort_handle();
            if tokio::time::timeout_at(deadline, o).await.is_err() {
                abort.abort();
                warn!("output still busy after grace period; its records stay buffered");
            }
        }
        if let Some(a) = self.admin {
            a.abort();
        }
        for p in &self.unix_paths {
            let _ = std::fs::remove_file(p);
        }
        if let Some(dir) = &self.scratch {
            let _ = std::fs::remove_dir_all(dir);
        }
        Ok(())
    }
}

async fn serve_lines(
    listener: TcpListener,
    ctx: Arc<InputCtx>,
    tag: String,
    opts: LineOptions,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            a = listener.accept() => if let Ok((s, _)) = a {
                let sink = LineSink::new(ctx.clone(), tag.clone(), None, opts.clone());
                tokio::spawn(async move {
                    let _ = sink.feed(s).await;
                });
            },
            _ = crate::signalled(&mut stop) => return,
        }
    }
}
