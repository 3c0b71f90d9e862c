"""Deploy the synthesis service on the Ray cluster this process is connected to, and run it.

    service = deploy(make_plan(config))     # Serve started (or joined), the app running
    service.url                             # http://127.0.0.1:8000
    undeploy()                              # the app deleted; Serve itself stays up
    run(config)                             # what jobs/serve.py does: deploy, serve until Ctrl-C or SIGTERM, undeploy

Serve runs on the same Ray as every other stage (pipeline.runtime.init_ray): a local
instance, or the cluster named by RAY_ADDRESS. Its HTTP proxy listens on --host:--port. A
Ray cluster has one Serve instance with one HTTP address, fixed when Serve first starts:
if Serve already runs there on another address, this app would answer on that one, so that
is refused (one line) rather than printed wrong.

Replicas: --replicas of them, or with --max-replicas Serve's autoscaling between the two
bounds, aiming at one full batch in flight per replica (`target_ongoing_requests` =
--max-batch-size). A CPU replica takes --threads-per-replica logical CPUs and runs with the
allocator settings of the pipeline's other CPU workers (pipeline.runtime.CPU_WORKER_MALLOC_ENV);
a GPU replica takes one GPU. Every replica gets this process's MLflow tracking URI
(pipeline.runtime.tracking_uri) in its environment, so it follows the alias in the registry
the plan opened the model from, even on a Ray instance started with another.
"""
from __future__ import annotations

import dataclasses
import signal
import socket
import sys
import threading
import webbrowser

from pipeline.errors import UserError
from pipeline.runtime import cpu_worker_runtime_env, init_ray, tracking_uri
from pipeline.serving.config import ServeConfig
from pipeline.serving.plan import ServePlan, make_plan

APP_NAME = "crn-synthesis"
# Requests a replica takes at once: a batch running, the next one filling, and a few page,
# schema and health requests beside them. More wait in the proxy.
SPARE_REQUESTS = 8


@dataclasses.dataclass(frozen=True)
class Service:
    url: str
    plan: ServePlan


def replica_settings(config: ServeConfig):
    from pipeline.serving.deployment import ReplicaSettings

    return ReplicaSettings(
        model=config.model, device="cuda" if config.use_gpu else "cpu", threads=config.threads_per_replica,
        max_batch_size=config.max_batch_size, batch_wait_s=config.batch_wait_ms / 1000,
        poll_seconds=config.poll_seconds, max_body_bytes=config.max_body_bytes, max_pixels=config.max_pixels,
        max_unknown_fraction=config.max_unknown_fraction, store=config.store, split=config.split)


def deployment_options(config: ServeConfig) -> dict:
    """Serve's options for the deployment: replicas or autoscaling, resources, queue depth."""
    actor = {"num_gpus": 1, "num_cpus": 1} if config.use_gpu else {"num_cpus": config.threads_per_replica}
    env = cpu_worker_runtime_env(config.use_gpu) or {"env_vars": {}}
    # The registry the plan opened the model in is the one the replicas follow, whatever the
    # environment Ray's workers were started with.
    env["env_vars"]["MLFLOW_TRACKING_URI"] = tracking_uri()
    actor["runtime_env"] = env
    options = {"ray_actor_options": actor, "max_ongoing_requests": 2 * config.max_batch_size + SPARE_REQUESTS}
    if config.max_replicas:
        options["autoscaling_config"] = {"min_replicas": config.min_replicas, "max_replicas": config.max_replicas,
                                         "initial_replicas": config.replicas,
                                         "target_ongoing_requests": config.max_batch_size}
    else:
        options["num_replicas"] = config.replicas
    return options


def check_port_free(host: str, port: int) -> None:
    """One line now, rather than a Serve proxy that fails to start, when something else has the port."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the proxy's server binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); give another --port") from None


def deploy(plan: ServePlan) -> Service:
    """Start Serve (or join the one running) on this process's Ray and run the app; returns once
    every replica is up."""
    from ray import serve
    from ray.serve.context import _get_global_client  # Serve's own record of the address it listens on

    from pipeline.serving.deployment import SynthesisService

    config = plan.config
    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        check_port_free(config.host, config.port)
    serve.start(http_options={"host": config.host, "port": config.port})
    running = _get_global_client().http_config
    if (running.host, running.port) != (config.host, config.port):
        raise UserError(f"Serve already runs on this Ray cluster at {running.host}:{running.port}; give --host "
                        f"{running.host} --port {running.port}, or shut that Serve down (serve shutdown)")
    application = SynthesisService.options(**deployment_options(config)).bind(replica_settings(config))
    # Access lines, one per request, stay out of the logs; the replicas' own lines (a new
    # version served, one refused) stay in.
    serve.run(application, name=APP_NAME, route_prefix="/", logging_config={"enable_access_log": False})
    return Service(url=f"http://{config.host}:{config.port}", plan=plan)


def undeploy() -> None:
    """Delete the app (its replicas stop); Serve and Ray stay up for whatever else runs there."""
    from ray import serve

    serve.delete(APP_NAME)


def run(config: ServeConfig, wait: threading.Event | None = None) -> Service:
    """The whole job: plan, Ray, deploy, say where, serve until Ctrl-C or SIGTERM (or `wait` is set)."""
    plan = make_plan(config)
    init_ray()
    stop = wait or threading.Event()
    if threading.current_thread() is threading.main_thread():
        # `ray job stop` and service managers send SIGTERM: the same orderly stop as Ctrl-C.
        # Installed after Ray's own handler (init_ray), which would abort the process.
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    service = deploy(plan)
    model = plan.model
    follows = f", following @{plan.follows} every {config.poll_seconds:g} s" if plan.follows else ""
    print(f"serving {model.pinned_uri} ({model.config.num_outputs} images of {model.config.top_resolution} per map"
          f"{follows}) at {service.url}/  (POST /synthesize, GET /schema, /health)", flush=True)
    if config.open:
        webbrowser.open(f"{service.url}/")
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping the service", file=sys.stderr, flush=True)
        undeploy()
    return service
