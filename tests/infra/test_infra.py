"""Container and cluster files, checked without Docker or a cluster: linters, schemas, and every container command
run as a plain process."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COMPOSE = yaml.safe_load((ROOT / "infra" / "compose.yaml").read_text())
LONG_RUNNING = ("postgres", "s3", "mlflow", "prefect")


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_dockerfile_passes_hadolint() -> None:
    done = _run(str(BIN / "hadolint"), "Dockerfile")
    assert done.returncode == 0, done.stdout + done.stderr


def test_yaml_passes_yamllint() -> None:
    done = _run(str(BIN / "yamllint"), "-s", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_kubernetes_manifests_match_the_schemas() -> None:
    manifests = sorted(str(p) for p in (ROOT / "infra" / "k8s").glob("*.yaml"))
    done = _run(str(BIN / "kubernetes-validate"), "--strict", *manifests)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("passed") == 11


def _render(template: object, values: dict) -> object:
    """Fills ``{{ name }}`` placeholders the way a Prefect worker does (whole-string placeholders keep their type)."""
    if isinstance(template, dict):
        return {k: _render(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [_render(v, values) for v in template]
    if isinstance(template, str) and (match := re.fullmatch(r"\{\{ (\w+) \}\}", template)):
        return values[match.group(1)]
    return template


def test_gpu_job_template_renders_a_valid_job_with_a_gpu() -> None:
    import kubernetes_validate

    template = json.loads((ROOT / "infra" / "k8s" / "gpu-job-template.json").read_text())
    values = {name: spec.get("default") for name, spec in template["variables"]["properties"].items()}
    values.update({
        "name": "train-x", "command": ["python", "-m", "prefect.engine"], "env": [], "labels": {"a": "b"},
        "image_pull_policy": "IfNotPresent", "finished_job_ttl": 600, "service_account_name": "prefect-worker",
        "cpu_request": "2", "cpu_limit": "4", "memory_request": "8Gi", "memory_limit": "16Gi",
    })  # fmt: skip
    job = _render(template["job_configuration"]["job_manifest"], values)
    kubernetes_validate.validate(job, "1.37.0", strict=True)
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu" and pod["nodeSelector"]


def test_compose_services_are_healthy_pinned_local_and_secret_free() -> None:
    services = COMPOSE["services"]
    assert set(services) == {
        "postgres", "s3", "create-bucket", "mlflow", "mlflow-users", "prefect", "worker-cpu", "worker-gpu"
    }  # fmt: skip
    for name in LONG_RUNNING:
        assert "healthcheck" in services[name], name
    for name, service in services.items():
        image = service["image"]
        assert image.startswith("${") or (":" in image and not image.endswith(":latest")), name
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
    text = (ROOT / "infra" / "compose.yaml").read_text()
    assert "change-me" not in text and not re.search(r"PASSWORD: [^$]", text)
    example = (ROOT / "infra" / ".env.example").read_text()
    for variable in set(re.findall(r"\$\{(\w+)\}", text)):
        assert f"\n{variable}=" in f"\n{example}", variable
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert COMPOSE["volumes"].keys() == {"pgdata", "s3data"}


# names of settings that hold a credential: their values must come from the environment or a Secret
CREDENTIAL = re.compile(r"(PASSWORD|SECRET|SECRET_KEY|AUTH_STRING|ACCESS_KEY|ACCESS_KEY_ID)$")


def test_compose_runs_both_servers_with_authentication_and_no_literal_credential() -> None:
    services = COMPOSE["services"]
    assert services["mlflow"]["command"][:4] == ["mlflow", "server", "--app-name", "basic-auth"]
    assert services["mlflow"]["environment"]["MLFLOW_AUTH_CONFIG_PATH"] == "/etc/mlflow/basic_auth.ini"
    assert services["prefect"]["environment"]["PREFECT_SERVER_API_AUTH_STRING"] == "${PREFECT_AUTH_STRING}"
    for name, service in services.items():
        environment = service.get("environment", {})
        for key, value in environment.items():
            if CREDENTIAL.search(key) or key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_AUTH_ADMIN_USERNAME"):
                assert re.fullmatch(r"\$\{\w+\}", value), (name, key)
        assert not any(re.search(r"://[^/@\s$]+:[^/@\s$]+@", str(word)) for word in service.get("command", [])), name
    workers = [services[name]["environment"] for name in ("worker-cpu", "worker-gpu")]
    for environment in workers:  # the pipeline's identity, never the admin's
        assert environment["MLFLOW_TRACKING_USERNAME"] == "${MLFLOW_PIPELINE_USERNAME}"
        assert environment["PREFECT_API_AUTH_STRING"] == "${PREFECT_AUTH_STRING}"
        assert not any("ADMIN" in value for value in environment.values())
    for secrets_file in ("infra/.env", ".env", "mlflow-server.env"):
        assert _run("git", "check-ignore", "-q", secrets_file).returncode == 0, f"{secrets_file} is not git-ignored"
    assert _run("git", "check-ignore", "-q", "infra/.env.example").returncode == 1


def _env_entries(node: object) -> list[dict]:
    """Every container ``env`` entry in a manifest."""
    if isinstance(node, list):
        return [entry for item in node for entry in _env_entries(item)]
    if not isinstance(node, dict):
        return []
    own = node["env"] if isinstance(node.get("env"), list) else []
    return own + [entry for key, value in node.items() if key != "env" for entry in _env_entries(value)]


def test_kubernetes_runs_mlflow_with_basic_auth_and_keeps_credentials_in_secrets() -> None:
    documents = [d for p in sorted((ROOT / "infra" / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text())]
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in documents}
    ini = (ROOT / "infra" / "mlflow" / "basic_auth.ini").read_text()
    assert by_name["ConfigMap", "mlflow-auth"]["data"]["basic_auth.ini"] == ini
    assert "admin_password" not in ini.replace("# admin_password", "") and "@" not in ini
    server = by_name["Deployment", "mlflow"]["spec"]["template"]["spec"]["containers"][0]
    assert server["args"][:4] == ["mlflow", "server", "--app-name", "basic-auth"]
    secrets = {d["metadata"]["name"] for d in documents if d["kind"] == "Secret"}
    assert secrets == {"odir-mlflow-server", "odir-pipeline"}  # only in secrets.example.yaml, with placeholders
    for document in documents:
        if document["kind"] == "Secret":
            assert all(v.startswith(("change-me", "odir", "admin", "http")) for v in document["stringData"].values())
            continue
        for env in _env_entries(document):
            if CREDENTIAL.search(env["name"]) or env["name"].endswith("USERNAME"):
                assert "value" not in env and "secretKeyRef" in env["valueFrom"], env["name"]
        assert not re.search(r"://[^/@\s\"]+:[^/@\s\"]+@", json.dumps(document)), document["metadata"]["name"]
    users_job = by_name["Job", "mlflow-users"]["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"] for e in users_job["env"] if "valueFrom" in e} == {
        "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "ODIR_PIPELINE_USERNAME", "ODIR_PIPELINE_PASSWORD",
        "ODIR_READER_USERNAME", "ODIR_READER_PASSWORD",
    }  # fmt: skip
    worker = by_name["Deployment", "prefect-worker-gpu"]["spec"]["template"]["spec"]["containers"][0]
    assert worker["envFrom"] == [{"secretRef": {"name": "odir-pipeline"}}]
    template = json.loads((ROOT / "infra" / "k8s" / "gpu-job-template.json").read_text())
    job = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert job["envFrom"] == [{"secretRef": {"name": "odir-pipeline"}}]


@pytest.mark.parametrize("service", ["create-bucket", "mlflow", "mlflow-users", "prefect", "worker-cpu", "worker-gpu"])
def test_compose_commands_of_our_image_run_as_plain_processes(service: str) -> None:
    command = COMPOSE["services"][service]["command"]
    program = command[0]
    words = [w for w in command[1:] if not w.startswith("-")][:2]  # the sub-commands, without the options
    done = _run(str(BIN / program), *words[: 2 if program in ("prefect", "mlflow") else 1], "--help")
    assert done.returncode == 0, done.stdout + done.stderr


def test_entrypoint_runs_steps_and_any_command() -> None:
    entrypoint = str(ROOT / "infra" / "docker" / "entrypoint.sh")
    env_path = f"PATH={BIN}:/usr/bin:/bin"
    step = subprocess.run(
        ["env", env_path, "sh", entrypoint, "step", "ingest", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert step.returncode == 0 and "--data-root" in step.stdout, step.stderr
    odir = subprocess.run(
        ["env", env_path, "sh", entrypoint, "odir", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert odir.returncode == 0 and "validate" in odir.stdout
    bare = subprocess.run(["env", env_path, "sh", entrypoint, "step"], capture_output=True, text=True, cwd=ROOT)
    assert bare.returncode == 2 and "usage: step NAME" in bare.stderr
