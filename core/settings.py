"""One settings object for everything configured; read from the environment and `.env`."""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.build_io import BudgetLimits, RolePolicy
from core.states import Role

# How a role's answer is asked for (activities/model/output_modes.py); auto: the strongest mode the
# endpoint takes, found at run time.
OutputMode = Literal["auto", "json_schema", "tools", "json_object", "text"]


class RoleModel(BaseModel):
    """Per-role model settings (LLM_ROLES): any field left out uses the default."""

    model: str | None = None
    fallback_model: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)
    output_mode: OutputMode | None = None
    context_tokens: int | None = Field(default=None, ge=256)


class ModelChoice(BaseModel):
    model: str
    temperature: float | None = None
    max_tokens: int | None = None
    output_mode: OutputMode = "auto"
    context_tokens: int | None = None  # None: what the server says, or unknown


class ModelPrice(BaseModel):
    prompt_per_million: float = Field(ge=0)
    completion_per_million: float = Field(ge=0)


# USD per million tokens; override or extend with LLM_PRICES.
DEFAULT_PRICES = {
    "gpt-4o-mini": ModelPrice(prompt_per_million=0.15, completion_per_million=0.60),
    "gpt-4o": ModelPrice(prompt_per_million=2.50, completion_per_million=10.00),
    "gpt-4.1": ModelPrice(prompt_per_million=2.00, completion_per_million=8.00),
    "gpt-4.1-mini": ModelPrice(prompt_per_million=0.40, completion_per_million=1.60),
}


class Settings(BaseSettings):
    # An empty variable (compose's `${X:-}`) means "not set": the default applies.
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", env_ignore_empty=True)

    # Temporal connection: the embedded dev server by default; any cluster or Temporal Cloud
    # with TLS (a client certificate and key for mTLS, or an API key).
    temporal_address: str = "localhost:7233"
    temporal_namespace: str = "default"
    temporal_task_queue: str = "q-assistant-builds"
    # The Web UI's address in links; unset, the embedded dev server's (TEMPORAL_UI_PORT).
    temporal_ui_url: str = ""
    temporal_tls: bool = False  # TLS without a client certificate (implied by cert or API key)
    temporal_tls_cert: Path | None = None  # client certificate (PEM) for mTLS
    temporal_tls_key: Path | None = None  # its private key (PEM)
    temporal_tls_ca: Path | None = None  # server CA (PEM); default: the system's roots
    temporal_tls_server_name: str | None = None  # when it differs from the address' host
    temporal_api_key: SecretStr | None = None

    # Workers: many processes may poll one task queue; each runs at most this much at once.
    worker_max_concurrent_activities: int = Field(default=50, ge=1)
    worker_max_concurrent_workflow_tasks: int = Field(default=50, ge=1)
    # Activities per second across all workers of the task queue (model calls are most of
    # them): a shared rate limit that protects the model endpoint. None: no limit.
    worker_activities_per_second: float | None = Field(default=None, gt=0)
    # Prometheus metrics of the worker (SDK runtime plus builds); "off": none. (An empty
    # variable means unset, like every other, so "off" is the way to say none.)
    worker_metrics_address: str = "127.0.0.1:9464"
    # On SIGTERM, running activities get this long to finish before they are cancelled.
    worker_shutdown_grace_seconds: float = Field(default=30, ge=0)
    # How much lower the worker's CPU priority is (os.nice; the test runs it starts inherit it):
    # builds are batch work, a person waiting on the API or the Web UI is not. 0: the same.
    worker_nice: int = Field(default=10, ge=0, le=19)

    # Observability: traces to an OTLP/HTTP collector when set; logs as text or JSON lines.
    otel_exporter_otlp_endpoint: str | None = None
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"

    # Embedded dev server (devstack.py)
    data_dir: Path = Path(".data")
    temporal_port: int = 7233
    temporal_ui_port: int = 8233

    # The mirror: SQLite file under data_dir unless DATABASE_URL names another database.
    database_url: str | None = None

    # HTTP API (api/). Without API_KEY every endpoint is open, and the API logs that at start.
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_key: SecretStr | None = None  # required to serve on an address other than loopback
    # The largest request body the API reads; larger ones get 413 before they are read.
    api_max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    # What a project registered through the API may name as its repository, comma-separated:
    # local folders (/srv/git) and URL prefixes (https://github.com/acme/). Empty: anything git
    # can clone, including any local path the worker can read and ssh URLs with its keys.
    project_repository_roots: str = ""
    # How long the API and starter.py wait for a worker to accept or refuse a command.
    command_timeout_seconds: float = Field(default=10, gt=0)

    # Models. Without an API key the offline model answers through the same openai SDK path.
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    llm_model: str = "gpt-4o-mini"
    llm_roles: dict[Role, RoleModel] = Field(default_factory=dict)
    llm_fallback_after_attempts: int = Field(default=3, ge=1)
    llm_schema_reasks: int = Field(default=2, ge=0, le=10)
    llm_output_mode: OutputMode = "auto"  # every role's, unless LLM_ROLES gives one its own
    # How the Code Writer's code travels: edit blocks in plain text, or inside JSON; auto:
    # blocks for real endpoints, json for the offline model.
    llm_edit_format: Literal["auto", "blocks", "json"] = "auto"
    llm_prices: dict[str, ModelPrice] = Field(default_factory=lambda: dict(DEFAULT_PRICES))
    llm_timeout_seconds: float = Field(default=120, gt=0)
    # The models' context window in tokens: a role's task is cut to fit it, with room for the
    # answer. 0: what the server says of itself (vLLM, llama.cpp), else no limit.
    llm_context_tokens: int = Field(default=0, ge=0)
    # Answers stream (usage included where the server sends it): the tokens so far show in
    # `status` and the Web UI, the text on the build's workflow stream. An endpoint that
    # refuses streaming is asked without it from then on.
    llm_stream: bool = True
    # A stream silent this long after its first token is abandoned and retried as a timeout
    # (before the first token, LLM_TIMEOUT_SECONDS: a long prompt takes a while to read).
    llm_stall_seconds: float = Field(default=60, gt=0)
    # How often the text received is published to the build's stream (one signal each).
    llm_stream_publish_seconds: float = Field(default=1.0, ge=0.1)
    # The worker asks each model the roles use one small question per output mode when it
    # starts (`starter.py model check`'s probe), logs what the endpoint takes in one line, and
    # asks the mode that worked first: a misconfigured endpoint shows before any build fails.
    llm_probe_at_start: bool = True
    offline_model_latency_seconds: float = Field(default=0, ge=0)

    # Role work: a git workspace per build, test runs with limits, local releases.
    workspace_dir: Path | None = None  # default: <data_dir>/workspaces
    releases_dir: Path | None = None  # default: <data_dir>/releases
    # Projects' own environments, cached by what declares their dependencies (activities/
    # testing/environment.py). Default: <data_dir>/environments
    environments_dir: Path | None = None
    # The test runner's wheels (pytest, pip), fetched once with the worker's pip. Default:
    # ~/.cache/q-assistant/wheels/runner
    runner_wheels_dir: Path | None = None
    # git's credential store (https://user:token@host/path lines, mode 0600): where the token of
    # a repository URL registered with one is kept, instead of in the registration. Workers on
    # other machines need the same file. Default: <data_dir>/git-credentials
    git_credentials_file: Path | None = None
    # Models' complete answers, kept so a retried call is not paid for again (activities/
    # answers.py); a build's are removed once none is newer than the retention. Default:
    # <data_dir>/answers
    answers_dir: Path | None = None
    # Where kept answers live: files under answers_dir, or the mirror's database, which every
    # worker of a fleet reaches (a retry on another machine finds its first try's answer).
    answer_store: Literal["files", "database"] = "files"
    answer_retention_days: float = Field(default=30, ge=0)
    # Greenfield projects' repositories (a project never registered gets one here).
    projects_dir: Path | None = None  # default: <data_dir>/projects
    # How often a project's release queue asks the build holding the turn whether it still
    # runs while others wait (a terminated build says nothing when it goes).
    release_queue_check_seconds: float = Field(default=60, gt=0)
    # The sandbox of every run of generated code (activities/sandbox/isolation.py).
    sandbox: Literal["auto", "bubblewrap", "landlock", "none"] = "auto"
    # A project's setup command may reach the network (pip install from an index); its test
    # runs never do.
    sandbox_setup_network: bool = False
    # The TCP ports that network reaches (a package index's); empty: any. Services on the
    # host's loopback (the API, Temporal, a database) listen elsewhere.
    sandbox_setup_ports: str = "443,80"
    test_timeout_seconds: float = Field(default=120, gt=0)
    test_memory_mb: int = Field(default=1024, ge=64)
    review_diff_max_chars: int = Field(default=40_000, ge=1000)
    # What the Q Assistant and the Code Writer see of the repository (the map, and the files
    # they work on), in estimated tokens; never more.
    repo_context_max_tokens: int = Field(default=8000, ge=200)

    # Builds
    # None by default. A build started with one ends itself FAILED shortly before it
    # (workflows/deadline.py): the server's timeout alone would end it with no record.
    build_execution_timeout_seconds: int = Field(default=0, ge=0)
    build_max_retries: int = Field(default=3, ge=0)
    # Per-build budget (a build may override it); 0 means no limit.
    build_max_tokens: int = Field(default=2_000_000, ge=0)
    build_max_cost_usd: float = Field(default=5.0, ge=0)
    budget_wait_seconds: float = Field(default=86_400, gt=0)
    attention_wait_seconds: float = Field(default=86_400, gt=0)
    # How often each worker asks Temporal about builds the mirror calls open, to write those
    # ended from outside (terminated, timed out) as such; 0: never.
    mirror_reconcile_seconds: float = Field(default=20, ge=0)
    # How long a build waits at an approval gate before it ends FAILED (7 days).
    approval_wait_seconds: float = Field(default=7 * 86_400, gt=0)
    role_start_to_close_seconds: float = Field(default=300, gt=0)
    role_max_attempts: int = Field(default=5, ge=1)
    role_initial_retry_seconds: float = Field(default=1, gt=0)
    role_max_retry_seconds: float = Field(default=30, gt=0)
    role_heartbeat_seconds: float = Field(default=30, gt=0)

    @model_validator(mode="after")
    def _ui_url(self) -> Self:
        """One source for each address: TEMPORAL_PORT (the embedded server's) is where the
        clients go unless TEMPORAL_ADDRESS says otherwise, as TEMPORAL_UI_PORT is for links."""
        if "temporal_address" not in self.model_fields_set and "temporal_port" in (
            self.model_fields_set
        ):
            self.temporal_address = f"localhost:{self.temporal_port}"
        if not self.temporal_ui_url:
            self.temporal_ui_url = f"http://localhost:{self.temporal_ui_port}"
        return self

    @model_validator(mode="after")
    def _tls_pair(self) -> Self:
        if (self.temporal_tls_cert is None) != (self.temporal_tls_key is None):
            raise ValueError("TEMPORAL_TLS_CERT and TEMPORAL_TLS_KEY go together: set both")
        return self

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        """Absolute from the start: paths under it are handed to the sandbox (bubblewrap
        refuses a relative one) and to processes with another working directory."""
        return value.expanduser().absolute()

    @field_validator("sandbox_setup_ports")
    @classmethod
    def _ports(cls, value: str) -> str:
        for port in filter(None, (p.strip() for p in value.split(","))):
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"SANDBOX_SETUP_PORTS: {port!r} is not a TCP port")
        return value

    @property
    def repository_roots(self) -> tuple[str, ...]:
        return tuple(r.strip() for r in self.project_repository_roots.split(",") if r.strip())

    @property
    def setup_ports(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.sandbox_setup_ports.split(",") if p.strip())

    @property
    def temporal_uses_tls(self) -> bool:
        return bool(self.temporal_tls or self.temporal_tls_cert or self.temporal_api_key)

    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'mirror.db').resolve()}"

    @property
    def workspaces(self) -> Path:
        return (self.workspace_dir or self.data_dir / "workspaces").resolve()

    @property
    def projects(self) -> Path:
        return (self.projects_dir or self.data_dir / "projects").resolve()

    @property
    def environments(self) -> Path:
        return (self.environments_dir or self.data_dir / "environments").resolve()

    @property
    def runner_wheels(self) -> Path:
        default = Path.home() / ".cache" / "q-assistant" / "wheels" / "runner"
        return (self.runner_wheels_dir or default).resolve()

    @property
    def releases(self) -> Path:
        return (self.releases_dir or self.data_dir / "releases").resolve()

    @property
    def answers(self) -> Path:
        return (self.answers_dir or self.data_dir / "answers").resolve()

    @property
    def git_credentials(self) -> Path:
        return (self.git_credentials_file or self.data_dir / "git-credentials").resolve()

    @property
    def offline_model(self) -> bool:
        return self.openai_api_key is None

    def model_for(self, role: Role, attempt: int = 1) -> ModelChoice:
        """The model and parameters of a role's call; its fallback model once the primary
        has failed `llm_fallback_after_attempts` times (the activity's attempt number)."""
        config = self.llm_roles.get(role, RoleModel())
        model = config.model or self.llm_model
        if config.fallback_model and attempt > self.llm_fallback_after_attempts:
            model = config.fallback_model
        return ModelChoice(
            model=model,
            temperature=config.temperature,
            max_tokens=config.max_tokens,
            output_mode=config.output_mode or self.llm_output_mode,
            context_tokens=config.context_tokens or self.llm_context_tokens or None,
        )

    def cost_of(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for a call, from the price table (0 for a model it does not list)."""
        price = self.llm_prices.get(model)
        if price is None:
            return 0.0
        return (
            prompt_tokens * price.prompt_per_million
            + completion_tokens * price.completion_per_million
        ) / 1_000_000

    def role_policy(self) -> RolePolicy:
        return RolePolicy(
            start_to_close_seconds=self.role_start_to_close_seconds,
            max_attempts=self.role_max_attempts,
            initial_interval_seconds=self.role_initial_retry_seconds,
            maximum_interval_seconds=self.role_max_retry_seconds,
            heartbeat_seconds=self.role_heartbeat_seconds,
        )

    @property
    def command_timeout(self) -> timedelta:
        return timedelta(seconds=self.command_timeout_seconds)

    @property
    def api_url(self) -> str:
        host = "localhost" if self.api_host in ("127.0.0.1", "0.0.0.0") else self.api_host
        return f"http://{host}:{self.api_port}"

    def budget(
        self, max_tokens: int | None = None, max_cost_usd: float | None = None
    ) -> BudgetLimits:
        """A build's budget: the given limits, else the settings' (0 means no limit)."""
        tokens = self.build_max_tokens if max_tokens is None else max_tokens
        cost = self.build_max_cost_usd if max_cost_usd is None else max_cost_usd
        return BudgetLimits(
            max_tokens=tokens or None,
            max_cost_usd=cost or None,
            wait_seconds=self.budget_wait_seconds,
        )

    def ui_link(self, workflow_id: str) -> str:
        base = self.temporal_ui_url.rstrip("/")
        return f"{base}/namespaces/{self.temporal_namespace}/workflows/{workflow_id}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
