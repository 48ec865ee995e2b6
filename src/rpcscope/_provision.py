"""``rpcscope provision``: set up Elasticsearch and Kibana for rpcscope outside Kubernetes.

For VMs, docker-compose or a managed Elasticsearch, where the chart's setup Job does not run.
It sends the same bodies the Job sends (the chart's ``files/elasticsearch/`` and
``files/kibana/``, copied into the package by ``tools/generate.py`` as
``_provision_data/assets.json``) with the chart's values turned into options of the same
defaults. Every object is read first and written only when it differs, so a second run changes
nothing and ``--dry-run`` can say what a run would change. Secrets come from the environment or
files, never the command line, where ``ps`` would show them to every user of the machine.
"""

from __future__ import annotations

import argparse
import base64
import copy
import dataclasses
import importlib.resources
import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from typing import IO, Any, Final

__all__ = ["ProvisionError", "add_arguments", "run"]

#: The oldest Elasticsearch the bodies are written for (data stream lifecycle of ``logs-*-*``,
#: the managed ``logs`` template composing ``logs@custom``).
MIN_ELASTICSEARCH: Final = (8, 0)
#: The saved objects carry ``coreMigrationVersion`` 8.8.0 and data views have a ``name`` since
#: 8.8; an older Kibana refuses objects from a newer one.
MIN_KIBANA: Final = (8, 8)
ILM_POLICY: Final = "rpcscope-logs"
COMPONENT_TEMPLATE: Final = "logs@custom"
ROLES: Final = ("rpcscope_fluentd_writer", "rpcscope_monitor", "rpcscope_logs_reader")
#: ``--user CLIENT=FILE``: the chart's client names -> (user name, role), as the setup Job uses.
USERS: Final = {
    "fluentd": ("rpcscope_fluentd", "rpcscope_fluentd_writer"),
    "elasticsearch-exporter": ("rpcscope_monitor", "rpcscope_monitor"),
    "grafana": ("rpcscope_grafana", "rpcscope_logs_reader"),
}
INSTALL_HINT: Final = "pip install 'rpcscope[provision]'"
_TIMEOUT: Final = 30.0


class ProvisionError(Exception):
    """A problem the user has to fix; the message says what and how."""


# --- the bodies -------------------------------------------------------------------------------


def load_assets() -> dict[str, Any]:
    """The generated bundle: ``{"elasticsearch": {file: body}, "kibana": {file: [objects]}}``."""
    text = (importlib.resources.files("rpcscope") / "_provision_data" / "assets.json").read_text(
        encoding="utf-8"
    )
    assets: dict[str, Any] = json.loads(text)
    return assets


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the chart templates into the bodies; ``None`` keeps the bodies' defaults (which
    equal the chart's ``values.yaml``)."""

    retention: str | None = None
    rollover_max_age: str | None = None
    rollover_max_primary_shard_size: str | None = None
    replicas: int | None = None


@dataclasses.dataclass(frozen=True)
class Item:
    """One object to install: where to read it, where to write it, and what it should hold."""

    kind: str
    name: str
    get_path: str
    put_path: str
    body: dict[str, Any]
    #: the part of the GET response to compare with ``body`` (``None``: not there)
    current: Callable[[Any], Any]
    method: str = "PUT"


def _entry(name: str) -> Callable[[Any], Any]:
    return lambda got: got[name]


def elasticsearch_items(
    assets: Mapping[str, Any], settings: Settings, *, roles: bool = True
) -> list[Item]:
    """The ILM policy, the ``logs@custom`` component template and (with ``roles``) the roles."""
    bodies = copy.deepcopy(assets["elasticsearch"])
    policy = bodies["ilm-policy.json"]
    rollover = policy["policy"]["phases"]["hot"]["actions"]["rollover"]
    if settings.rollover_max_age is not None:
        rollover["max_age"] = settings.rollover_max_age
    if settings.rollover_max_primary_shard_size is not None:
        rollover["max_primary_shard_size"] = settings.rollover_max_primary_shard_size
    if settings.retention is not None:
        policy["policy"]["phases"]["delete"]["min_age"] = settings.retention
    template = bodies["component-template-logs-custom.json"]
    if settings.replicas is not None:
        template["template"]["settings"]["index.number_of_replicas"] = settings.replicas

    items = [
        Item("ILM policy", ILM_POLICY, f"/_ilm/policy/{ILM_POLICY}", f"/_ilm/policy/{ILM_POLICY}",
             policy, lambda got: {"policy": got[ILM_POLICY]["policy"]}),
        Item("component template", COMPONENT_TEMPLATE,
             f"/_component_template/{COMPONENT_TEMPLATE}",
             f"/_component_template/{COMPONENT_TEMPLATE}", template,
             lambda got: got["component_templates"][0]["component_template"]),
    ]
    if roles:
        for role in ROLES:
            items.append(Item("role", role, f"/_security/role/{role}",
                              f"/_security/role/{role}", bodies[f"role-{role}.json"],
                              _entry(role)))
    return items


# --- comparing --------------------------------------------------------------------------------


def _flat_settings(settings: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Elasticsearch answers ``{"index": {"number_of_replicas": "1"}}`` for a PUT of
    ``{"index.number_of_replicas": 1}``: compare settings flattened, values as strings."""
    flat: dict[str, str] = {}
    for key, value in settings.items():
        if isinstance(value, Mapping):
            flat.update(_flat_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return flat


def covers(current: Any, wanted: Any) -> bool:
    """Whether ``current`` holds everything ``wanted`` says: keys the server adds with default
    values (``min_age: 0ms``, ``allow_restricted_indices: false``) do not count as a
    difference, but a list of another length does (an extra privilege is a change)."""
    if isinstance(wanted, Mapping):
        if not isinstance(current, Mapping):
            return False
        for key, value in wanted.items():
            if key == "settings" and isinstance(value, Mapping):
                got = _flat_settings(current.get(key) or {})
                if any(got.get(k) != v for k, v in _flat_settings(value).items()):
                    return False
            elif key not in current or not covers(current[key], value):
                return False
        return True
    if isinstance(wanted, list):
        return (isinstance(current, list) and len(current) == len(wanted)
                and all(covers(c, w) for c, w in zip(current, wanted, strict=True)))
    return bool(current == wanted)


# --- Elasticsearch ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Credentials:
    username: str | None = None
    password: str | None = None
    api_key: str | None = None

    def header(self) -> dict[str, str]:
        if self.api_key:
            return {"Authorization": f"ApiKey {self.api_key}"}
        if self.username is not None and self.password is not None:
            token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            return {"Authorization": f"Basic {token}"}
        return {}


def _read_secret(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            value = handle.read().strip()
    except OSError as error:
        raise ProvisionError(f"cannot read {what} from {path}: {error.strerror}") from error
    if not value:
        raise ProvisionError(f"{what} file {path} is empty")
    return value


def credentials(env: Mapping[str, str], prefix: str, username: str | None,
                password_file: str | None, fallback: Credentials | None = None) -> Credentials:
    """``<PREFIX>_API_KEY``, or a user name (option or ``<PREFIX>_USERNAME``) with a password
    from ``password_file`` or ``<PREFIX>_PASSWORD``; else ``fallback``."""
    api_key = env.get(f"{prefix}_API_KEY") or None
    user = username or env.get(f"{prefix}_USERNAME") or None
    password = (_read_secret(password_file, f"{prefix.lower()} password") if password_file
                else env.get(f"{prefix}_PASSWORD") or None)
    if api_key:
        return Credentials(api_key=api_key)
    if password is not None and user is None:
        raise ProvisionError(f"a password but no user name: set {prefix}_USERNAME "
                             f"(or --{'kibana-' if prefix == 'KIBANA' else ''}username)")
    if user is not None and password is None:
        raise ProvisionError(f"user {user!r} but no password: set {prefix}_PASSWORD or pass "
                             f"--{'kibana-' if prefix == 'KIBANA' else ''}password-file")
    if user is not None:
        return Credentials(user, password)
    return fallback or Credentials()


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("-", 1)[0].split(".")[:2] if part.isdigit())


class Elasticsearch:
    """The cluster through the official client (its retries, TLS and product check)."""

    def __init__(self, url: str, creds: Credentials, ca_cert: str | None) -> None:
        try:
            import elasticsearch
        except ImportError as error:
            raise ProvisionError(
                f"the Elasticsearch client is not installed: {INSTALL_HINT}") from error
        self._errors = elasticsearch
        self.url = url
        options: dict[str, Any] = {"request_timeout": _TIMEOUT, "max_retries": 2}
        if ca_cert:
            options["ca_certs"] = ca_cert
        if creds.api_key:
            options["api_key"] = creds.api_key
        elif creds.username is not None and creds.password is not None:
            options["basic_auth"] = (creds.username, creds.password)
        self.client = elasticsearch.Elasticsearch(url, **options)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """The response body, ``None`` for 404; a :class:`ProvisionError` for what the user
        must fix (credentials, privileges, TLS, an unreachable cluster)."""
        errors = self._errors
        headers = {"accept": "application/json"}
        if body is not None:
            headers["content-type"] = "application/json"
        try:
            return self.client.perform_request(method, path, headers=headers, body=body).body
        except errors.NotFoundError:
            return None
        except errors.AuthenticationException as error:
            raise ProvisionError(
                f"Elasticsearch at {self.url} refused the credentials (HTTP 401): set "
                "ELASTICSEARCH_USERNAME and ELASTICSEARCH_PASSWORD (or --password-file), or "
                "ELASTICSEARCH_API_KEY") from error
        except errors.AuthorizationException as error:
            raise ProvisionError(
                f"Elasticsearch refused {method} {path} (HTTP 403): the user needs the "
                "manage_ilm, manage_index_templates and manage_security cluster privileges "
                "(the built-in superuser role has them)") from error
        except errors.UnsupportedProductError as error:
            raise ProvisionError(
                f"{self.url} does not answer as Elasticsearch 8 or later would: rpcscope "
                "provision needs Elasticsearch 8.0 or newer") from error
        except errors.ApiError as error:
            raise ProvisionError(
                f"Elasticsearch answered {method} {path} with HTTP {error.meta.status}: "
                f"{str(error.body)[:500]}") from error
        except errors.TransportError as error:
            raise ProvisionError(
                f"cannot reach Elasticsearch at {self.url}: {error} (for a private CA, pass "
                "--ca-cert)") from error

    def check(self, *, roles: bool) -> str:
        info = self.request("GET", "/") or {}
        number = str(info.get("version", {}).get("number", "0"))
        if _version(number) < MIN_ELASTICSEARCH:
            raise ProvisionError(
                f"Elasticsearch {number} at {self.url} is too old: rpcscope provision needs "
                "8.0 or newer (upgrade the cluster; the bodies use 8.x data stream templates)")
        if roles:
            xpack = self.request("GET", "/_xpack", None) or {}
            security = xpack.get("features", {}).get("security", {})
            license_ = xpack.get("license", {})
            if license_.get("status") not in (None, "active"):
                raise ProvisionError(
                    f"the cluster's {license_.get('type')} license is {license_.get('status')}: "
                    "renew it, or pass --no-roles and create the roles yourself")
            if not security.get("available", False) or not security.get("enabled", False):
                raise ProvisionError(
                    f"security is not enabled on this cluster ({license_.get('type', '?')} "
                    "license): roles cannot be created. Enable it (xpack.security.enabled: "
                    "true), or pass --no-roles and give clients their privileges yourself")
        return number


# --- Kibana -------------------------------------------------------------------------------------


class Kibana:
    """Kibana's HTTP API with urllib: the Elasticsearch client does not speak it, and the few
    JSON calls need nothing more."""

    def __init__(self, url: str, creds: Credentials, ca_cert: str | None) -> None:
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise ProvisionError(f"--kibana {url!r}: expected an http:// or https:// URL")
        self.url = url.rstrip("/")
        self._headers = {"kbn-xsrf": "rpcscope", **creds.header()}
        try:
            self._context = ssl.create_default_context(cafile=ca_cert)
        except (OSError, ssl.SSLError) as error:
            raise ProvisionError(f"cannot load the CA certificate {ca_cert}: {error}") from error

    def request(self, method: str, path: str, body: Any = None, *,
                content_type: str = "application/json") -> Any:
        data: bytes | None = None
        if isinstance(body, bytes):
            data = body
        elif body is not None:
            data = json.dumps(body).encode()
        headers = dict(self._headers)
        if data is not None:
            headers["Content-Type"] = content_type
        # The scheme was checked in __init__ (http or https only).
        request = urllib.request.Request(self.url + path, data=data, method=method,  # noqa: S310
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=_TIMEOUT,  # noqa: S310
                                        context=self._context) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            if error.code == 401:
                raise ProvisionError(
                    f"Kibana at {self.url} refused the credentials (HTTP 401): set "
                    "KIBANA_USERNAME and KIBANA_PASSWORD (or --kibana-password-file), or "
                    "KIBANA_API_KEY (without them, the Elasticsearch credentials are used)"
                ) from error
            detail = error.read()[:500].decode(errors="replace")
            raise ProvisionError(
                f"Kibana answered {method} {path} with HTTP {error.code}: {detail}") from error
        except (urllib.error.URLError, OSError) as error:
            raise ProvisionError(f"cannot reach Kibana at {self.url}: {error} (for a private "
                                 "CA, pass --ca-cert or --kibana-ca-cert)") from error
        try:
            return json.loads(raw) if raw.strip() else None
        except ValueError as error:
            raise ProvisionError(f"{self.url}{path} did not answer with JSON; is {self.url} "
                                 "Kibana (and not a proxy's page)?") from error

    def check(self) -> str:
        status = self.request("GET", "/api/status") or {}
        number = str(status.get("version", {}).get("number", "0"))
        if _version(number) < MIN_KIBANA:
            raise ProvisionError(
                f"Kibana {number} at {self.url} is too old: rpcscope's data view and saved "
                "objects need Kibana 8.8 or newer (its data views API and saved object "
                "versions); upgrade Kibana")
        return number


def _import_body(objects: list[dict[str, Any]]) -> tuple[bytes, str]:
    """A multipart/form-data body with one ``file`` part, as ``_import`` requires."""
    boundary = uuid.uuid4().hex
    ndjson = "".join(json.dumps(obj, sort_keys=True) + "\n" for obj in objects)
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"rpcscope.ndjson\"\r\nContent-Type: application/ndjson\r\n\r\n"
            f"{ndjson}\r\n--{boundary}--\r\n").encode()
    return body, f"multipart/form-data; boundary={boundary}"


# --- the run --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Report:
    out: IO[str]
    dry_run: bool
    changed: int = 0
    unchanged: int = 0

    def line(self, verb: str, what: str) -> None:
        if verb != "unchanged":
            self.changed += 1
            verb = f"would {verb[:-1] if verb.endswith('d') else verb}" if self.dry_run else verb
        else:
            self.unchanged += 1
        print(f"{verb:14} {what}", file=self.out)


def provision_elasticsearch(es: Elasticsearch, items: list[Item],
                            users: Mapping[str, str], report: Report) -> None:
    for item in items:
        got = es.request("GET", item.get_path)
        current = None
        if got is not None:
            try:
                current = item.current(got)
            except (KeyError, IndexError, TypeError):
                current = None
        what = f"Elasticsearch {item.kind} {item.name}"
        if current is not None and covers(current, item.body):
            report.line("unchanged", what)
            continue
        if not report.dry_run:
            es.request(item.method, item.put_path, item.body)
        report.line("created" if current is None else "updated", what)
    for client, password in users.items():
        name, role = USERS[client]
        what = f"Elasticsearch user {name} (role {role})"
        got = (es.request("GET", f"/_security/user/{name}") or {}).get(name)
        if got is not None and got.get("roles") == [role] and _authenticates(es, name, password):
            report.line("unchanged", what)
            continue
        if not report.dry_run:
            es.request("PUT", f"/_security/user/{name}", {"password": password, "roles": [role]})
        report.line("created" if got is None else "updated", what)


def _authenticates(es: Elasticsearch, name: str, password: str) -> bool:
    """Whether the user's password already is ``password``: Elasticsearch never returns it."""
    client = es.client.options(basic_auth=(name, password))
    errors = es._errors
    try:
        client.perform_request("GET", "/_security/_authenticate",
                               headers={"accept": "application/json"})
    except errors.AuthenticationException:
        return False
    except (errors.ApiError, errors.TransportError) as error:
        raise ProvisionError(f"cannot check user {name}'s password: {error}") from error
    return True


def provision_kibana(kibana: Kibana, objects: list[dict[str, Any]], report: Report) -> None:
    views = [o for o in objects if o["type"] == "index-pattern"]
    others = [o for o in objects if o["type"] != "index-pattern"]
    for view in views:
        attributes = view["attributes"]
        wanted = {"title": attributes["title"], "timeFieldName": attributes["timeFieldName"],
                  "name": attributes["name"]}
        what = f"Kibana data view {view['id']} ({attributes['title']})"
        path = f"/api/data_views/data_view/{urllib.parse.quote(view['id'])}"
        got = (kibana.request("GET", path) or {}).get("data_view")
        if got is not None and covers(got, wanted):
            report.line("unchanged", what)
            continue
        if not report.dry_run:
            if got is None:
                kibana.request("POST", "/api/data_views/data_view",
                               {"data_view": {"id": view["id"], **wanted}})
            else:
                kibana.request("POST", path, {"data_view": wanted})
        report.line("created" if got is None else "updated", what)
    if not others:
        return
    found = kibana.request("POST", "/api/saved_objects/_bulk_get",
                           [{"type": o["type"], "id": o["id"]} for o in others]) or {}
    current = {(o.get("type"), o.get("id")): o for o in found.get("saved_objects", [])
               if "error" not in o}
    stale: list[dict[str, Any]] = []
    pending: list[tuple[str, str]] = []  # reported once the import succeeded
    for obj in others:
        got = current.get((obj["type"], obj["id"]))
        what = f"Kibana {obj['type']} {obj['id']} ({obj['attributes'].get('title', '')})"
        if got is not None and covers(got.get("attributes"), obj["attributes"]) and covers(
                sorted(got.get("references", []), key=json.dumps),
                sorted(obj["references"], key=json.dumps)):
            report.line("unchanged", what)
            continue
        stale.append(obj)
        pending.append(("created" if got is None else "updated", what))
    if stale and not report.dry_run:
        body, content_type = _import_body(stale)
        result = kibana.request("POST", "/api/saved_objects/_import?overwrite=true", body,
                                content_type=content_type) or {}
        if not result.get("success"):
            raise ProvisionError(f"Kibana did not import the saved objects: "
                                 f"{json.dumps(result.get('errors', result))[:500]}")
    for verb, what in pending:
        report.line(verb, what)


def run(args: argparse.Namespace, out: IO[str], err: IO[str],
        env: Mapping[str, str] | None = None) -> int:
    """The ``provision`` subcommand; returns the exit status."""
    env = os.environ if env is None else env
    try:
        users = {}
        for spec in args.user:
            client, sep, path = spec.partition("=")
            if not sep or client not in USERS or not path:
                raise ProvisionError(f"--user {spec!r}: expected CLIENT=PASSWORD_FILE with "
                                     f"CLIENT one of {', '.join(USERS)}")
            users[client] = _read_secret(path, f"{client} password")
        if users and args.no_roles:
            raise ProvisionError("--user needs the roles: drop --no-roles")
        if users and not args.elasticsearch:
            raise ProvisionError("--user needs --elasticsearch URL")
        for flag, url in (("--elasticsearch", args.elasticsearch), ("--kibana", args.kibana)):
            parts = urllib.parse.urlsplit(url or "")
            if parts.username is not None or parts.password is not None:
                raise ProvisionError(
                    f"{flag}: the URL holds credentials, which every user of this machine can "
                    "read in the process list; put them in ELASTICSEARCH_USERNAME/_PASSWORD "
                    "(or KIBANA_*) or a --password-file instead")
        assets = load_assets()
        report = Report(out, args.dry_run)
        if args.elasticsearch:
            es_creds = credentials(env, "ELASTICSEARCH", args.username, args.password_file)
            es = Elasticsearch(args.elasticsearch, es_creds, args.ca_cert)
            version = es.check(roles=not args.no_roles)
            print(f"Elasticsearch {version} at {args.elasticsearch}", file=out)
            replicas = args.replicas
            if replicas is None:  # the chart's rule: no replicas a single node cannot place
                health = es.request("GET", "/_cluster/health") or {}
                replicas = 0 if int(health.get("number_of_data_nodes", 2)) == 1 else 1
            settings = Settings(args.retention, args.rollover_max_age,
                                args.rollover_max_primary_shard_size, replicas)
            provision_elasticsearch(es, elasticsearch_items(assets, settings,
                                                            roles=not args.no_roles),
                                    users, report)
        if args.kibana:
            fallback = credentials(env, "ELASTICSEARCH", args.username, args.password_file)
            kb_creds = credentials(env, "KIBANA", args.kibana_username,
                                   args.kibana_password_file, fallback)
            kibana = Kibana(args.kibana, kb_creds, args.kibana_ca_cert or args.ca_cert)
            version = kibana.check()
            print(f"Kibana {version} at {args.kibana}", file=out)
            objects = [obj for _, objs in sorted(assets["kibana"].items()) for obj in objs]
            provision_kibana(kibana, objects, report)
    except ProvisionError as error:
        print(f"rpcscope provision: error: {error}", file=err)
        return 2
    if args.dry_run:
        print(f"dry run: {report.changed} change(s) not made, {report.unchanged} unchanged",
              file=out)
    else:
        print(f"done: {report.changed} changed, {report.unchanged} unchanged", file=out)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The subcommand's options; defaults of the body values come from the bodies themselves,
    which equal the chart's ``values.yaml``."""
    parser.description = (
        "Install rpcscope's Elasticsearch ILM policy, logs@custom component template and "
        "least-privilege roles, and Kibana's data view, saved searches and dashboard: the same "
        "JSON the chart's setup Job uses. Reads first, writes only what differs. Credentials "
        "from ELASTICSEARCH_USERNAME/ELASTICSEARCH_PASSWORD or ELASTICSEARCH_API_KEY (and "
        "KIBANA_*, defaulting to the Elasticsearch ones) or from files; never from arguments."
    )
    policy = load_assets()["elasticsearch"]["ilm-policy.json"]["policy"]["phases"]
    rollover = policy["hot"]["actions"]["rollover"]
    parser.add_argument("--elasticsearch", metavar="URL", help="Elasticsearch URL")
    parser.add_argument("--kibana", metavar="URL", help="Kibana URL")
    parser.add_argument("--username", help="Elasticsearch user (or ELASTICSEARCH_USERNAME)")
    parser.add_argument("--password-file", metavar="FILE",
                        help="file holding the Elasticsearch password (or ELASTICSEARCH_PASSWORD)")
    parser.add_argument("--kibana-username", help="Kibana user (or KIBANA_USERNAME)")
    parser.add_argument("--kibana-password-file", metavar="FILE",
                        help="file holding the Kibana password (or KIBANA_PASSWORD)")
    parser.add_argument("--ca-cert", metavar="PEM",
                        help="CA certificate(s) to verify Elasticsearch (and Kibana) TLS with; "
                             "verification is always on")
    parser.add_argument("--kibana-ca-cert", metavar="PEM",
                        help="CA certificate(s) for Kibana when it differs from --ca-cert")
    parser.add_argument("--retention", default=None,
                        help=f"delete log indices this long after rollover (default "
                             f"{policy['delete']['min_age']}, as the chart)")
    parser.add_argument("--rollover-max-age", default=None,
                        help=f"roll over after this age (default {rollover['max_age']})")
    parser.add_argument("--rollover-max-primary-shard-size", default=None,
                        help=f"roll over at this primary shard size (default "
                             f"{rollover['max_primary_shard_size']})")
    parser.add_argument("--replicas", type=int, default=None,
                        help="index.number_of_replicas of log indices (default as the chart: "
                             "0 on a single-node cluster, else 1)")
    parser.add_argument("--no-roles", action="store_true",
                        help="skip the roles (a cluster without security)")
    parser.add_argument("--user", action="append", default=[], metavar="CLIENT=PASSWORD_FILE",
                        help=f"also create a client's user with its role, as the chart does; "
                             f"CLIENT is one of {', '.join(USERS)}")
    parser.add_argument("--dry-run", action="store_true",
                        help="read only; print what would change")
    parser.set_defaults(handler=_handler)


def _handler(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    if not args.elasticsearch and not args.kibana:
        print("rpcscope provision: error: give --elasticsearch URL and/or --kibana URL",
              file=err)
        return 2
    return run(args, out, err)
