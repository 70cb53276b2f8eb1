"""The card (README.md) of a version: a pushed README kept, the hub's front matter merged in, its facts appended."""

from __future__ import annotations

import hashlib

import pytest
import yaml

from pefthub_server.registry.card import HEADING, MAX_README, render_card
from pefthub_server.registry.models import Version
from tests.backend.hf_read.conftest import README

pytestmark = pytest.mark.django_db


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text[4 : text.index("\n---\n", 4)])


def bot(number: int) -> Version:
    return Version.objects.get(repository__name="bot", number=number)


def test_a_pushed_readme_is_kept_with_the_hubs_keys_merged_and_facts_appended(catalogue, api, alice):
    response = api(alice.token).get("/hf/acme/bot/resolve/2/README.md")
    text = response.content.decode()
    assert response.headers["ETag"] == f'"{hashlib.sha256(response.content).hexdigest()}"'
    assert front_matter(text) == {"license": "apache-2.0", "tags": ["chat", "peft", "pefthub", "lora"], "language": "en",
                                  "library_name": "peft", "base_model": "acme/llama-tiny", "base_model_relation": "adapter"}
    user_text = README.decode().split("---\n", 2)[2].strip()
    assert user_text in text and text.index(user_text) < text.index(HEADING)
    section = text[text.index(HEADING):]
    targets = bot(2).adapter_config["target_modules"]  # peft saves a set: its order is the pushed file's
    assert sorted(targets) == ["q_proj", "v_proj"] and f"| target modules | {', '.join(targets)} |" in section
    assert '"' not in section.split("### How to load it")[0]
    assert "| multi lora servable | yes |" in section and "| message | Add a README |" in section
    assert "AutoPeftModelForCausalLM" in section
    info = api(alice.token).get("/hf/api/models/acme/bot/revision/2").json()
    assert info["cardData"] == front_matter(text)
    assert {"chat", "base_model:adapter:acme/llama-tiny", "base_model:acme/llama-tiny"} <= set(info["tags"])


def test_peft_s_own_readme_loses_its_local_base_path(catalogue, api, alice, tiny_base):
    text = api(alice.token).get("/hf/acme/bot/resolve/1/README.md").content.decode()
    data = front_matter(text)
    assert data["base_model"] == "acme/llama-tiny" and data["pipeline_tag"] == "text-generation"
    assert not [t for t in data["tags"] if t.startswith("base_model:")] and str(tiny_base) not in text.split(HEADING)[1]
    assert "# Model Card for Model ID" in text  # peft's template, kept


@pytest.mark.parametrize(("readme", "why"), [
    (b"---\ntags: [a\n---\nbody\n", "not valid YAML"),
    (b"---\n- a\n- b\n---\nbody\n", "not a mapping"),
    (b"---\na: &x [1]\nb: *x\n---\nbody\n", "anchors"),
    (b"---\nwhen: !!binary aGk=\n---\nbody\n", "values other than"),
    (b"---\ntags: [a]\nbody without an end\n", "no closing"),
    (b"---\n" + b"k: " + b"v" * (70 << 10) + b"\n---\nbody\n", "longer than 64 KiB"),
    (b"---\nlol: !!python/object/apply:os.system [echo hi]\n---\nbody\n", "not valid YAML"),
])
def test_a_front_matter_the_hub_cannot_read_is_kept_as_text_with_a_note(catalogue, readme, why):
    card = render_card(bot(2), hub_url="http://hub", readable=set(), readme=readme)
    text = card.text.decode()
    assert card.data == front_matter(text) == {"library_name": "peft", "base_model": "acme/llama-tiny",
                                                "base_model_relation": "adapter", "tags": ["pefthub", "peft", "lora"]}
    assert readme.decode().rstrip() in text and why in text.split(HEADING)[1].split("|")[0]


def test_cards_are_deterministic_and_plain_without_a_readme(catalogue, alice):
    version = bot(2)
    plain = b"# Notes\n\nNo front matter here.\n"
    one = render_card(version, hub_url="http://hub", readable=set(), readme=plain)
    assert one == render_card(Version.objects.get(pk=version.pk), hub_url="http://hub", readable=set(), readme=plain)
    assert one.text.decode().split("---\n", 2)[2].startswith("\n# Notes\n\nNo front matter here.\n\n## PEFT Hub\n")
    bare = render_card(version, hub_url="http://hub", readable=set()).text.decode()
    assert bare.startswith("---\nlibrary_name: peft\nbase_model: acme/llama-tiny\nbase_model_relation: adapter\n"
                           "tags:\n- pefthub\n- peft\n- lora\n---\n\n# acme/bot\n\n## PEFT Hub\n")
    tags_only = render_card(version, hub_url="http://hub", readable=set(), readme=b"---\ntags: chat\nlicense: mit\n---\n").data
    assert tags_only["tags"] == ["chat", "pefthub", "peft", "lora"] and tags_only["license"] == "mit"


def test_a_readme_past_the_limit_is_served_as_pushed(catalogue, api, alice, tiny_adapter, tmp_path):
    import shutil

    from tests.backend.hf_read.conftest import push

    folder = tmp_path / "big"
    shutil.copytree(tiny_adapter[0], folder)
    big = b"# Big\n" + b"x" * MAX_README
    (folder / "README.md").write_bytes(big)
    push(catalogue, "acme/bot", folder)
    response = api(alice.token).get("/hf/acme/bot/resolve/3/README.md")
    assert b"".join(response.streaming_content) == big


def test_a_dataset_gets_a_dataset_card(catalogue, api, alice):
    text = api(alice.token).get("/hf/datasets/acme/data/resolve/main/README.md").content.decode()
    assert front_matter(text) == {"tags": ["pefthub"]}
    assert 'load_dataset("acme/data", revision="1")' in text and 'Hub().pull("acme/data@1")' in text
    assert "AutoModel" not in text and "peft" not in text.lower().replace("pefthub", "").replace("peft hub", "")
    info = api(alice.token).get("/hf/api/datasets/acme/data").json()
    assert info["cardData"] == {"tags": ["pefthub"]} and "library_name" not in info and "modelId" not in info


def test_a_models_own_base_model_is_kept_where_the_hub_knows_none(catalogue, api, alice, tiny_base, tmp_path):
    import shutil

    from tests.backend.hf_read.conftest import push

    folder = tmp_path / "base-v2"
    shutil.copytree(tiny_base, folder)
    (folder / "README.md").write_text("---\nbase_model:\n- meta-llama/Llama-3.2-1B\n- 7\ntags: [llama]\n---\nA tiny llama.\n")
    push(catalogue, "acme/llama-tiny", folder)
    info = api(alice.token).get("/hf/api/models/acme/llama-tiny").json()
    assert info["cardData"]["base_model"] == ["meta-llama/Llama-3.2-1B", 7] and info["library_name"] == "transformers"
    assert info["tags"] == ["llama", "pefthub", "safetensors", "base_model:meta-llama/Llama-3.2-1B"]


def test_the_card_names_only_lineage_repositories_the_reader_may_read(catalogue, api, alice, carol):
    """Public acme/bot trained on private acme/secret: carol's card (HF view and web page) never names it."""
    from django.test import Client

    version = bot(2)
    secret = Version.objects.get(repository__name="secret")
    version.metadata = {"lineage": {"job": "j", "method": "lora",
                                    "dataset": {"repo": "acme/secret", "number": 1, "digest": secret.digest}}}
    version.save()
    mine = api(alice.token).get("/hf/acme/bot/resolve/2/README.md").content.decode()
    assert f"| training data | `acme/secret@1` ({secret.digest}) |" in mine
    theirs = api(carol.token).get("/hf/acme/bot/resolve/2/README.md").content.decode()
    assert "| training data | a repository you cannot read |" in theirs and "acme/secret" not in theirs
    anonymous = api().get("/hf/acme/bot/resolve/2/README.md").content.decode()
    assert "acme/secret" not in anonymous and secret.digest not in anonymous
    client = Client()
    client.force_login(carol.user)
    page = client.get("/acme/bot/versions/2").content.decode()
    assert "acme/secret" not in page and secret.digest not in page
