"""The agent's configuration: one TOML file per scanner, secrets from the environment or files.

Keys are the interface labs write and document against (see ``config/*.toml``). Every key can
also be set from the environment as ``SCANNER_AGENT_<SECTION>__<KEY>`` (the environment wins),
which is how secrets arrive: ``SLACK_BOT_TOKEN`` / ``SCANNER_AGENT_ALERTS__SLACK_TOKEN``,
``SCANNER_AGENT_ALERTS__SMTP_PASSWORD``, or the ``*_file`` keys naming a file that holds them.
Secrets are ``SecretStr`` so they never print.

Relative paths are resolved against the folder the agent is started in (the repository for
``make demo``); ``scanner-agent check`` prints the absolute paths it resolved.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from scanner_agent.core.errors import ConfigError
from scanner_agent.core.patterns import DEFAULT_PATTERNS
from scanner_agent.secret_files import read_secret_file
from scanner_agent.secret_files import secret_file_problems as secret_file_problems  # for reports.checks


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScannerConfig(_Section):
    name: str = Field(min_length=1, max_length=64)
    watch: Path
    barcode_regex: str = r"(?<!\d)(?P<barcode>\d{6})(?!\d)"  # six digits, not inside a longer number
    observer: Literal["auto", "inotify", "polling"] = "auto"
    settle_seconds: float = Field(default=30, ge=0)
    rescan_seconds: float = Field(default=300, gt=0)
    poll_interval: float = Field(default=2.0, gt=0)
    patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_PATTERNS))
    max_parallel: int = Field(default=2, ge=1, le=32)
    #: Where scans that cannot be placed (no barcode, corrupt) are moved. Default: ``<watch>/.quarantine``
    #: (a dot-folder: same filesystem, so a rename; and the watcher ignores it).
    quarantine: Path | None = None
    #: On SIGTERM, how long in-flight transfers may run before they are aborted (and resumed next start).
    stop_timeout_seconds: float = Field(default=300, ge=0)
    #: Retry a transient failure (storage down, source still changing) after this long, doubling to 1 h.
    retry_seconds: float = Field(default=60, gt=0)
    allow_root: bool = False
    #: Formats OpenSlide cannot read (``["*.isyntax", "*.czi", "*.vsi"]``): stored with the same verified
    #: copy, naming and journal, recorded as "not validated". Default: none.
    passthrough_patterns: list[str] = Field(default_factory=list)
    #: A flag file the lab's workflow writes when a scan is done (``"{stem}.done"``): a scan counts as
    #: complete only once it exists and the scan has settled; it is stored and removed with the scan.
    completion_marker: str = ""
    #: Free the scanner's disk once the scan is stored (false: never; some vendors' software keeps its own
    #: database of what is on the scanner).
    remove_source: bool = True
    #: With ``remove_source``: free it this many days after storing, once the stored copy is re-verified
    #: against its sha256.
    remove_source_after_days: float | None = Field(default=None, ge=0)
    #: Where the barcode is looked for, in this order: the file name (``barcode_regex``), the slide's
    #: metadata (vendor barcode fields, NDPI tag 65468), the codes printed on its label picture.
    barcode_sources: list[str] = Field(default_factory=lambda: ["name", "metadata", "label"])
    #: Slides are parsed in a worker process (OpenSlide, libtiff, Pillow are C parsers of untrusted
    #: files): its address-space cap (RLIMIT_AS) in MB, and how long one slide may take to read.
    slide_memory_mb: int = Field(default=2048, gt=0)
    slide_timeout_seconds: float = Field(default=120, gt=0)

    @field_validator("barcode_sources")
    @classmethod
    def _known_sources(cls, v: list[str]) -> list[str]:
        from scanner_agent.core.barcode import check_barcode_sources

        return list(check_barcode_sources(v))

    @field_validator("name")
    @classmethod
    def _name_is_plain(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 _.-]*", v):
            raise ValueError("use letters, digits, space, '_', '.', '-' (it names the Prefect flow)")
        return v

    @field_validator("completion_marker")
    @classmethod
    def _marker_names_its_scan(cls, v: str) -> str:
        # One file beside the scan, named after it: a fixed name would mark every scan done at once.
        if v and (not re.search(r"\{(stem|name)\}", v) or "/" in v or "\\" in v):
            raise ValueError('name the marker after its scan with {stem} or {name}, e.g. "{stem}.done"')
        if v:
            try:
                v.format(stem="x", name="x.svs")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"only {{stem}} and {{name}} may appear in braces ({exc})") from None
        return v


class StorageConfig(_Section):
    root: Path
    layout: str = "{Study}/{Experiment}"
    #: Bytes of free space to keep beyond the scan's size before copying.
    reserve_bytes: int = Field(default=1 << 30, ge=0)
    #: A file that must exist in ``root`` before anything is written (e.g. ".scanner-agent-storage",
    #: created once on the share). Guards against writing into the empty mount point of an
    #: unmounted share. Empty: no check.
    marker_file: str = ""
    #: The daemon re-hashes each stored file this often (fixity); 0 turns background verification off.
    verify_every_days: float = Field(default=30, ge=0)
    #: Background verification reads at most this many MB a second, so it never competes with transfers.
    verify_mb_per_second: float = Field(default=50, gt=0)


class SheetConfig(_Section):
    csv: Path | None = None
    spreadsheet_key: str = ""
    worksheet: str = ""
    credentials_file: Path | None = None
    refresh_seconds: float = Field(default=60, ge=1)
    recheck_seconds: float = Field(default=300, gt=0)
    api_url: str = ""
    timeout_seconds: float = Field(default=30, gt=0)
    hold_alert_hours: float = Field(default=24, gt=0)
    barcode_column: str = "Barcode"
    #: Write each scan's outcome into these columns of its row (Google Sheet; with a CSV, only logged).
    write_back: bool = False
    status_column: str = "Scan Status"
    stored_as_column: str = "Stored As"
    stored_at_column: str = "Stored At"


class JournalConfig(_Section):
    path: Path


class AlertsConfig(_Section):
    slack_channel: str = ""
    slack_token_file: Path | None = None
    slack_token: SecretStr | None = (
        None  # environment only (SLACK_BOT_TOKEN or SCANNER_AGENT_ALERTS__SLACK_TOKEN)
    )
    slack_api_url: str = ""
    email_to: list[str] = Field(default_factory=list)
    email_from: str = ""
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_starttls: bool = True
    smtp_username: str = ""
    smtp_password_file: Path | None = None
    smtp_password: SecretStr | None = None  # environment only
    #: PEM file of the CA(s) to trust for the SMTP server's STARTTLS certificate (a lab's internal
    #: CA or a self-signed relay); empty: the system's trust store.
    smtp_ca_file: Path | None = None
    prefect_ui_url: str = ""
    repeat_after_minutes: float = Field(default=60, ge=0)
    #: Attach the slide's label picture to a "no barcode" alert, so a person can read it by eye.
    #: Off by default: labels can carry patient identifiers.
    attach_label: bool = False
    #: "HH:MM" (host local time): a daily digest to Slack (stored, held, failed, oldest held); "" = off.
    digest_time: str = ""

    @field_validator("digest_time")
    @classmethod
    def _digest_hhmm(cls, v: str) -> str:
        from scanner_agent.core.digest import parse_digest_time

        parse_digest_time(v)  # raises naming [alerts] digest_time
        return v.strip()


class RescansConfig(_Section):
    column: str = "Rescan Requested"
    deadline_hours: float = Field(default=72, gt=0)


class QcConfig(_Section):
    enabled: bool = True
    blur_threshold: float | None = None
    min_tissue_fraction: float | None = None


class PrefectConfig(_Section):
    api_url: str = ""  # empty: PREFECT_API_URL, else Prefect's embedded API
    ui_url: str = ""
    #: How often the agent looks for runs a person pressed Retry on in the UI.
    retry_poll_seconds: float = Field(default=5, gt=0)
    #: `scanner-agent setup-prefect`: a Running scan run with no heartbeat for this long is set
    #: Crashed by the server (its host died). Must exceed twice PREFECT_FLOWS_HEARTBEAT_FREQUENCY (180 s).
    crash_after_seconds: float = Field(default=600, ge=10)
    #: `setup-prefect --notify`: a file holding a Slack incoming-webhook URL (or any webhook taking
    #: Slack's {"text": ...} JSON); or SCANNER_AGENT_PREFECT__NOTIFY_WEBHOOK_URL (environment only).
    notify_webhook_url_file: Path | None = None
    notify_webhook_url: SecretStr | None = None
    #: Emit a Prefect event for every scan outcome (``scanner-agent.scan.stored`` ...; docs/events.md),
    #: queued in the journal's file until the server takes it.
    events: bool = True


class MetricsConfig(_Section):
    #: ``host:port`` to serve Prometheus metrics on (``/metrics``), e.g. ``"127.0.0.1:9464"``. Empty: off.
    listen: str = ""

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        from scanner_agent.core.hostport import parse_host_port

        if v:
            parse_host_port(v)  # ValueError (shown as "metrics.listen: ...") on a malformed address
        return v


class TransferConfig(_Section):
    """How gently copies run on the scanner PC (``storage/throttle.py``, ``storage/ioprio.py``)."""

    #: Cap on the agent's read rate (MB/s, 10^6 bytes); unset: no cap. Labs throttle shared links by day.
    max_mb_per_second: float | None = Field(default=None, gt=0, le=100_000)
    #: While a scan in the watch folder is still growing, transfers slow to scanning_mb_per_second.
    yield_while_scanning: bool = True
    scanning_mb_per_second: float = Field(default=50, gt=0, le=100_000)
    #: I/O scheduling class of the transfer threads (ioprio_set); "best-effort" uses io_priority_level.
    io_class: Literal["best-effort", "idle"] = "best-effort"
    io_priority_level: int = Field(default=7, ge=0, le=7)
    #: A scan still growing after this long: an alert says it never finished (transfers stay throttled).
    stall_hours: float = Field(default=6, gt=0)


class AgentConfig(BaseSettings):
    """The whole configuration of one agent (one scanner)."""

    model_config = SettingsConfigDict(env_prefix="SCANNER_AGENT_", env_nested_delimiter="__", extra="forbid")

    scanner: ScannerConfig
    storage: StorageConfig
    sheet: SheetConfig = Field(default_factory=SheetConfig)
    journal: JournalConfig
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    rescans: RescansConfig = Field(default_factory=RescansConfig)
    qc: QcConfig = Field(default_factory=QcConfig)
    prefect: PrefectConfig = Field(default_factory=PrefectConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    transfer: TransferConfig = Field(default_factory=TransferConfig)

    #: Where this configuration was read from (not a key).
    source_file: Path | None = Field(default=None, exclude=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)

    # --- derived values -------------------------------------------------------------------

    @property
    def quarantine_dir(self) -> Path:
        return self.scanner.quarantine or (self.scanner.watch / ".quarantine")

    @property
    def state_dir(self) -> Path:
        return self.journal.path.parent

    @property
    def sheet_cache_path(self) -> Path:
        return self.state_dir / f"{self.journal.path.stem}.sheet-cache.json"

    @property
    def flow_name(self) -> str:
        return f"Scan Image Flow: {self.scanner.name}"

    def slack_token(self) -> str | None:
        if self.alerts.slack_token is not None:
            return self.alerts.slack_token.get_secret_value()
        if env := os.environ.get("SLACK_BOT_TOKEN"):
            return env
        if self.alerts.slack_token_file:
            return read_secret_file(self.alerts.slack_token_file, "alerts.slack_token_file")
        return None

    def smtp_password(self) -> str | None:
        if self.alerts.smtp_password is not None:
            return self.alerts.smtp_password.get_secret_value()
        if self.alerts.smtp_password_file:
            return read_secret_file(self.alerts.smtp_password_file, "alerts.smtp_password_file")
        return None

    def notify_webhook_url(self) -> str | None:
        if self.prefect.notify_webhook_url is not None:
            return self.prefect.notify_webhook_url.get_secret_value()
        if self.prefect.notify_webhook_url_file:
            return read_secret_file(self.prefect.notify_webhook_url_file, "prefect.notify_webhook_url_file")
        return None

    def ui_url(self) -> str:
        return (
            self.alerts.prefect_ui_url or self.prefect.ui_url or os.environ.get("PREFECT_UI_URL", "")
        ).rstrip("/")


def _absolute(p: Path | None) -> Path | None:
    return None if p is None else Path(os.path.abspath(p.expanduser()))


def _pretty_validation(exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see config/cardinal.toml for every key)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        out.append(f"{loc}: {msg}")
    return out


def load_config(path: str | os.PathLike[str], *, overrides: dict[str, Any] | None = None) -> AgentConfig:
    """Read and validate a scanner's TOML file. Raises ConfigError listing every problem."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p} is not valid TOML: {exc}") from None
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update(values)
    try:
        cfg = AgentConfig(**data)
    except ValidationError as exc:
        raise ConfigError(_pretty_validation(exc), source=str(p)) from None
    cfg.source_file = p
    _resolve_paths(cfg)
    problems = static_problems(cfg)
    if problems:
        raise ConfigError(problems, source=str(p))
    return cfg


def _resolve_paths(cfg: AgentConfig) -> None:
    cfg.scanner.watch = _absolute(cfg.scanner.watch)  # type: ignore[assignment]
    cfg.scanner.quarantine = _absolute(cfg.scanner.quarantine)
    cfg.storage.root = _absolute(cfg.storage.root)  # type: ignore[assignment]
    cfg.journal.path = _absolute(cfg.journal.path)  # type: ignore[assignment]
    cfg.sheet.csv = _absolute(cfg.sheet.csv)
    cfg.sheet.credentials_file = _absolute(cfg.sheet.credentials_file)
    cfg.alerts.slack_token_file = _absolute(cfg.alerts.slack_token_file)
    cfg.alerts.smtp_password_file = _absolute(cfg.alerts.smtp_password_file)
    cfg.alerts.smtp_ca_file = _absolute(cfg.alerts.smtp_ca_file)
    cfg.prefect.notify_webhook_url_file = _absolute(cfg.prefect.notify_webhook_url_file)


def static_problems(cfg: AgentConfig) -> list[str]:
    """Problems visible without touching the network or the filesystem beyond a stat."""
    from scanner_agent.core.barcode import compile_barcode_regex
    from scanner_agent.core.naming import layout_columns

    problems: list[str] = []
    try:
        compile_barcode_regex(cfg.scanner.barcode_regex)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if cfg.sheet.csv is None and not cfg.sheet.spreadsheet_key:
        problems.append("sheet: set either sheet.csv (a local CSV) or sheet.spreadsheet_key (a Google Sheet)")
    if cfg.sheet.spreadsheet_key and cfg.sheet.credentials_file is None:
        problems.append(
            "sheet.credentials_file: required with sheet.spreadsheet_key (the Google service-account JSON)"
        )
    try:
        layout_columns(cfg.storage.layout)
    except (ValueError, ConfigError) as exc:
        problems.append(f"storage.layout: {exc}")
    watch, root = cfg.scanner.watch, cfg.storage.root
    if watch == root or _inside(root, watch) or _inside(watch, root):
        problems.append(f"storage.root ({root}) and scanner.watch ({watch}) must not contain each other")
    if cfg.alerts.email_to and not (cfg.alerts.smtp_host and cfg.alerts.email_from):
        problems.append("alerts: email_to is set but smtp_host or email_from is missing")
    if cfg.alerts.slack_channel and not (
        cfg.alerts.slack_token_file or cfg.alerts.slack_token or os.environ.get("SLACK_BOT_TOKEN")
    ):
        problems.append(
            "alerts.slack_channel is set but no token: set SLACK_BOT_TOKEN or alerts.slack_token_file"
        )
    return problems


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
        return True
    except ValueError:
        return False
