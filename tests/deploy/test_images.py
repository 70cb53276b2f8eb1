"""The images (deploy/Dockerfile.server, deploy/Dockerfile.worker): multi-stage, pinned bases, pinned packages
(deploy/constraints.txt), a numeric non-root user, the server's health check and `serve`."""

from __future__ import annotations

import importlib.util
import re
import shlex

import pytest
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.deploy.manifests import DEPLOY, dockerfile_stages

IMAGES = ("server", "worker")
PINNED_BASE = re.compile(r"[a-z0-9./-]+:\d+\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?|[a-z0-9./-]+@sha256:[0-9a-f]{64}")


def stages(image: str):
    return dockerfile_stages(DEPLOY / f"Dockerfile.{image}")


def constraints_module():
    spec = importlib.util.spec_from_file_location("deploy_constraints", DEPLOY / "constraints.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pins() -> dict[str, str]:
    found = {}
    for line in (DEPLOY / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version.strip(), f"constraints.txt: {line!r} is not an exact pin"
            assert canonicalize_name(name) not in found, f"constraints.txt: {name} twice"
            found[canonicalize_name(name)] = version.strip()
    return found


@pytest.mark.parametrize("image", IMAGES)
def test_a_build_stage_and_a_runtime_stage_on_one_pinned_base(image):
    build, runtime = stages(image)[0], stages(image)[-1]
    assert len(stages(image)) >= 2 and build.name, f"{image}: multi-stage, the first named"
    for stage in stages(image):
        assert PINNED_BASE.fullmatch(stage.base), f"{image}: FROM {stage.base} is not an exact version"
    assert build.base == runtime.base, f"{image}: the virtualenv copied from {build.base} runs on {runtime.base}"
    copies = [args for args in runtime.all("COPY") if args.startswith(f"--from={build.name} ")]
    assert copies, f"{image}: the runtime stage copies nothing from {build.name}"
    assert not any(ins == "RUN" and "pip install" in args for ins, args in runtime.instructions), \
        f"{image}: packages are installed in the build stage only"


@pytest.mark.parametrize("image", IMAGES)
def test_every_pip_install_uses_the_constraints(image):
    build = stages(image)[0]
    copied = [args.split() for args in build.all("COPY") if args.split()[0] == "deploy/constraints.txt"]
    assert copied, f"{image}: deploy/constraints.txt is not copied into the build stage"
    target = copied[0][-1]
    installs = [args for args in build.all("RUN") if "pip install" in args]
    assert installs, image
    for args in installs:
        words = shlex.split(args)
        assert "-c" in words and words[words.index("-c") + 1] == target, f"{image}: {args} ignores the constraints"


@pytest.mark.parametrize("image", IMAGES)
def test_the_runtime_runs_as_a_numeric_non_root_user(image):
    runtime = stages(image)[-1]
    user = runtime.all("USER")
    assert user, f"{image}: no USER in the final stage (it would run as root)"
    uid, _, gid = user[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or (gid.isdigit() and int(gid) != 0)), \
        f"{image}: USER {user[-1]}: numeric (Kubernetes' runAsNonRoot checks a number), never 0"
    assert any(f"--uid {uid}" in args for args in runtime.all("RUN")), f"{image}: uid {uid} is not created"


def test_the_server_image_checks_healthz_and_serves():
    runtime = stages("server")[-1]
    assert any("/healthz" in args for args in runtime.all("HEALTHCHECK"))
    assert shlex.split(runtime.all("CMD")[-1].strip("[]").replace(",", " "))[:2] == ["pefthub-server", "serve"]
    assert runtime.all("EXPOSE") == ["8000"]


def test_the_worker_image_runs_a_worker():
    cmd = stages("worker")[-1].all("CMD")[-1]
    assert shlex.split(cmd.strip("[]").replace(",", " "))[0] == "pefthub-worker"


def test_the_constraints_pin_every_runtime_dependency_at_an_accepted_version():
    """Regenerate with `.venv/bin/python deploy/constraints.py > deploy/constraints.txt` when this fails."""
    pinned = pins()
    requirements = constraints_module().runtime_requirements()
    missing = sorted(set(requirements) - set(pinned))
    assert not missing, f"deploy/constraints.txt does not pin {missing}"
    extra = sorted(set(pinned) - set(requirements))
    assert not extra, f"deploy/constraints.txt pins {extra}, which no image installs"
    for name, reqs in requirements.items():
        for req in reqs:
            assert req.specifier.contains(Version(pinned[name]), prereleases=True), \
                f"{name}=={pinned[name]} does not satisfy {req}"

