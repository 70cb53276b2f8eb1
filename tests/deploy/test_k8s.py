"""The Kubernetes manifests: built by kubectl's own kustomize, every object valid against Kubernetes' OpenAPI
schemas (strict: an unknown field is an error), and the shape the operations guide promises."""

from __future__ import annotations

import base64
import copy

import kubernetes_validate
import pytest

from tests.deploy.manifests import DEPLOY, K8S_BASE, K8S_EXAMPLE, ROLES, dockerfile_stages, find, kustomize_build, pod_spec

#: the oldest Kubernetes the manifests promise (docs/operations.md), and the newest the validator knows
VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
WORKLOADS = ("Deployment", "Job")


def objects(folder=K8S_EXAMPLE):
    return kustomize_build(folder)


def role_object(role: str) -> dict:
    kind, name = ROLES[role][2].split("/")
    return find(objects(), kind, name)


def containers(obj: dict) -> list[dict]:
    spec = pod_spec(obj)
    return [*spec.get("initContainers", []), *spec["containers"]]


@pytest.mark.parametrize("folder", [K8S_BASE, K8S_EXAMPLE], ids=["base", "overlays/example"])
@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_is_valid_against_the_kubernetes_schemas(folder, version):
    for obj in kustomize_build(folder):
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_validator_refuses_a_misspelt_field():
    """The check can fail: `livenesProbe` is no field of a container."""
    api = copy.deepcopy(role_object("api"))
    pod_spec(api)["containers"][0]["livenesProbe"] = pod_spec(api)["containers"][0].pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="livenesProbe"):
        kubernetes_validate.validate(api, VERSIONS[0], strict=True)


def test_the_example_deploys_every_role_in_its_namespace_with_its_image():
    names = {"server": "registry.example.com/pefthub/pefthub-server", "worker": "registry.example.com/pefthub/pefthub-worker"}
    for role, (image, _, _) in ROLES.items():
        obj = role_object(role)
        assert obj["metadata"]["namespace"] == "pefthub", role
        for container in containers(obj):
            assert container["image"] == f"{names[image]}:0.1.0", (role, container["name"])
    assert {o["metadata"].get("namespace") for o in objects() if o["kind"] != "Namespace"} == {"pefthub"}


def test_every_pod_runs_as_the_images_user_without_privileges():
    uids = {image: int(dockerfile_stages(DEPLOY / f"Dockerfile.{image}")[-1].all("USER")[-1].split(":")[0])
            for image in ("server", "worker")}
    for role, (image, _, _) in ROLES.items():
        obj = role_object(role)
        pod = pod_spec(obj)["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == uids[image], role
        assert pod_spec(obj)["automountServiceAccountToken"] is False, role
        for container in containers(obj):
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, (role, container["name"])
            assert security["readOnlyRootFilesystem"] is True, (role, container["name"])
            assert security["capabilities"]["drop"] == ["ALL"], (role, container["name"])
            assert "cpu" in container["resources"]["requests"] and "memory" in container["resources"]["limits"]
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{role}: a read-only root needs a writable /tmp"


def test_the_api_is_probed_served_and_scaled():
    api = role_object("api")
    container = pod_spec(api)["containers"][0]
    assert container["command"][:2] == ["pefthub-server", "serve"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert ports == {"http": 8000} and f"{ports['http']}" in container["command"]
    service = find(objects(), "Service", "pefthub-api")
    labels = api["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert api["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    hpa = find(objects(), "HorizontalPodAutoscaler", "pefthub-api")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "pefthub-api"}
    assert hpa["spec"]["minReplicas"] >= 2 and container["resources"]["requests"]["cpu"]


@pytest.mark.parametrize("role", ["api", "beat"])
def test_new_pods_that_use_the_database_wait_for_the_migrate_job(role):
    init = pod_spec(role_object(role))["initContainers"]
    assert [c["name"] for c in init] == ["wait-for-migrations"]
    assert "until pefthub-server migrate --check;" in init[0]["command"][-1]
    assert init[0]["envFrom"] == pod_spec(role_object(role))["containers"][0]["envFrom"], "the same database"


def test_the_migrate_job_migrates_and_one_beat_runs():
    job = role_object("migrate")
    assert pod_spec(job)["containers"][0]["command"][:2] == ["pefthub-server", "migrate"]
    assert pod_spec(job)["restartPolicy"] == "Never"
    beat = role_object("beat")
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"] == {"type": "Recreate"}, "never two reapers"


def test_gpu_workers_ask_for_a_gpu_and_land_on_gpu_nodes():
    gpu, cpu = role_object("worker-gpu"), role_object("worker-cpu")
    container = pod_spec(gpu)["containers"][0]
    assert container["command"][-2:] == ["--queues", "gpu"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod_spec(gpu)["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod_spec(gpu)["tolerations"]
    cpu_container = pod_spec(cpu)["containers"][0]
    assert cpu_container["command"][-2:] == ["--queues", "cpu"]
    assert "nvidia.com/gpu" not in str(cpu_container["resources"]) and "nodeSelector" not in pod_spec(cpu)


def test_every_config_and_secret_a_pod_reads_is_in_the_build():
    for role in ROLES:
        for container in containers(role_object(role)):
            for source in container.get("envFrom", []):
                kind, ref = ("ConfigMap", source["configMapRef"]) if "configMapRef" in source \
                    else ("Secret", source["secretRef"])
                assert any(o["kind"] == kind and o["metadata"]["name"] == ref["name"] for o in objects()), \
                    f"{role}: {kind}/{ref['name']} is not in the build"


def test_the_example_secrets_are_examples_and_the_base_ships_none():
    for name in ("pefthub-server", "pefthub-worker"):
        values = {k: base64.b64decode(v).decode() for k, v in find(objects(), "Secret", name)["data"].items()}
        assert values and all("example" in value for value in values.values()), f"{name}: {values}"
    assert not any(o["kind"] == "Secret" for o in objects(K8S_BASE))
