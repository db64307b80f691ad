"""Config decoding, environment overrides and every error path: one line naming the file and key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from helexa.config import Config, load_config, parse_listen
from helexa.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str, name: str = "gateway.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path: Path | None, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env or {})
    message = info.value.message
    assert "\n" not in message
    return message


def test_no_file_gives_defaults_that_start_both_roles():
    cfg = load_config(None, env={})
    assert cfg == Config()
    assert cfg.gateway.listen == "127.0.0.1:31313"
    assert cfg.gateway.metrics_listen == "127.0.0.1:31314"
    assert cfg.neuron.listen == "127.0.0.1:13131"
    assert cfg.server.max_body_mb == 16


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_file_decodes(path: Path):
    if path.name.startswith("models"):
        cfg = load_config(None, env={"HELEXA_GATEWAY__CATALOGUE": str(path)})
        assert cfg.models, "the catalogue example should show models"
    else:
        load_config(path, env={})


def test_full_file_decodes(tmp_path):
    path = write(
        tmp_path,
        """
[gateway]
listen = "0.0.0.0:8080"
[auth]
api_keys = ["k1"]
[eviction]
strategy = "priority"
[[neurons]]
name = "a"
endpoint = "http://a:13131"
token = "t"
[[models]]
id = "Qwen/Qwen3-8B"
harness = "llamacpp"
aliases = ["qwen"]
options = { ctx_size = 4096 }
""",
    )
    cfg = load_config(path, env={})
    assert cfg.gateway.listen == "0.0.0.0:8080"
    assert cfg.eviction.strategy == "priority"
    assert cfg.neurons[0].token == "t"
    assert cfg.models[0].options == {"ctx_size": 4096}


def test_missing_file_names_the_file(tmp_path):
    assert error_of(tmp_path / "nope.toml") == f"{tmp_path / 'nope.toml'}: no such file"


def test_invalid_toml_names_the_file_and_position(tmp_path):
    message = error_of(write(tmp_path, "[gateway\nlisten = 1\n"))
    assert message.startswith("gateway.toml: invalid TOML:")
    assert "line 1" in message


def test_wrong_type_names_the_key_path(tmp_path):
    text = '[[neurons]]\nname = "a"\nendpoint = "http://a:1"\n[[neurons]]\nname = "b"\nendpoint = 5\n'
    assert error_of(write(tmp_path, text)) == "gateway.toml: $.neurons[1].endpoint: expected str, got int"


def test_unknown_key_is_an_error(tmp_path):
    message = error_of(write(tmp_path, '[gateway]\nlisen = "0.0.0.0:1"\n'))
    assert message == "gateway.toml: $.gateway.lisen: unknown key"


def test_unknown_section_is_an_error(tmp_path):
    assert error_of(write(tmp_path, "[gatway]\n")) == "gateway.toml: $.gatway: unknown key"


def test_bad_enum_value(tmp_path):
    message = error_of(write(tmp_path, '[eviction]\nstrategy = "fifo"\n'))
    assert message == "gateway.toml: $.eviction.strategy: invalid enum value 'fifo'"


def test_bad_listen_address(tmp_path):
    message = error_of(write(tmp_path, '[gateway]\nlisten = "31313"\n'))
    assert message == "gateway.toml: $.gateway.listen: expected host:port, got '31313'"


def test_neuron_endpoint_must_be_a_url(tmp_path):
    message = error_of(write(tmp_path, '[[neurons]]\nname = "a"\nendpoint = "gpu1:13131"\n'))
    assert message.startswith("gateway.toml: $.neurons[0].endpoint: expected an http(s) URL")


@pytest.mark.parametrize(
    ("neuron", "says"),
    [
        ('multi_host = true\nadvertise_address = "10.0.0.1"\n', "$.neuron.gang_peers: multi_host needs the IP"),
        ('advertise_address = "fe80::1%x --trust-remote-code"\n', "$.neuron.advertise_address: expected an IP"),
        ('gang_peers = ["10.0.0.1", "fe80::1%eth0"]\n', "$.neuron.gang_peers[1]: expected an IP address"),
    ],
    ids=["multi_host without gang_peers", "a scope id with argv in it", "a scope id"],
)
def test_gang_settings_are_checked(tmp_path, neuron, says):
    """A neuron joins gangs only with a list of its peers (the rank ports are unauthenticated: the token alone
    must not point a rank anywhere), and every address is a plain IP literal (they become argv)."""
    message = error_of(write(tmp_path, "[neuron]\n" + neuron, "neuron.toml"))
    assert says in message, message


def test_duplicate_neuron_names(tmp_path):
    text = '[[neurons]]\nname = "a"\nendpoint = "http://a:1"\n[[neurons]]\nname = "a"\nendpoint = "http://b:1"\n'
    assert error_of(write(tmp_path, text)) == "gateway.toml: $.neurons[1].name: duplicate neuron name 'a'"


@pytest.mark.parametrize("model_id", ["../etc/passwd", "/abs/path", "a/../b", "a//b", "a b", ".hidden", "x/"])
def test_model_ids_with_path_tricks_are_rejected(tmp_path, model_id):
    message = error_of(write(tmp_path, f'[[models]]\nid = "{model_id}"\n'))
    assert message.startswith("gateway.toml: $.models[0].id: model id not allowed: use letters, digits")


def test_duplicate_model_id_or_alias(tmp_path):
    text = '[[models]]\nid = "a"\naliases = ["b"]\n[[models]]\nid = "b"\n'
    assert error_of(write(tmp_path, text)) == "gateway.toml: $.models[1]: 'b' is already used by model 'a'"


def test_catalogue_file_is_merged_relative_to_the_config(tmp_path):
    write(tmp_path, '[[models]]\nid = "m1"\nharness = "llamacpp"\n', name="models.toml")
    cfg = load_config(write(tmp_path, '[gateway]\ncatalogue = "models.toml"\n'), env={})
    assert [m.id for m in cfg.models] == ["m1"]


def test_catalogue_errors_name_the_catalogue_file(tmp_path):
    write(tmp_path, '[[models]]\nid = "m1"\nvram_mb = "lots"\n', name="models.toml")
    message = error_of(write(tmp_path, '[gateway]\ncatalogue = "models.toml"\n'))
    assert message == "models.toml: $.models[0].vram_mb: expected int, got str"


def test_missing_catalogue_file(tmp_path):
    message = error_of(write(tmp_path, '[gateway]\ncatalogue = "nope.toml"\n'))
    assert message == f"{tmp_path / 'nope.toml'}: no such file"


# ------------------------------------------------------------------------------------------ environment


def test_env_overrides_the_file(tmp_path):
    path = write(tmp_path, '[gateway]\nlisten = "127.0.0.1:1"\n[server]\nmax_body_mb = 2\n')
    env = {
        "HELEXA_GATEWAY__LISTEN": "0.0.0.0:9000",
        "HELEXA_SERVER__MAX_BODY_MB": "64",
        "HELEXA_AUTH__API_KEYS": '["k1", "k2"]',
        "HELEXA_CONFIG": "ignored.toml",
        "UNRELATED": "x",
    }
    cfg = load_config(path, env=env)
    assert cfg.gateway.listen == "0.0.0.0:9000"
    assert cfg.server.max_body_mb == 64
    assert cfg.auth.api_keys == ["k1", "k2"]


def test_env_indexes_lists_and_appends(tmp_path):
    path = write(tmp_path, '[[neurons]]\nname = "a"\nendpoint = "http://a:1"\n')
    env = {
        "HELEXA_NEURONS__0__TOKEN": "secret",
        "HELEXA_NEURONS__1__NAME": "b",
        "HELEXA_NEURONS__1__ENDPOINT": "http://b:1",
    }
    cfg = load_config(path, env=env)
    assert [(n.name, n.token) for n in cfg.neurons] == [("a", "secret"), ("b", "")]


def test_env_without_a_file():
    cfg = load_config(None, env={"HELEXA_NEURON__TOKEN": "t0k"})
    assert cfg.neuron.token == "t0k"


def test_env_error_names_the_variable():
    message = error_of(None, env={"HELEXA_SERVER__MAX_BODY_MB": "lots"})
    assert message == "<defaults>: $.server.max_body_mb: expected int, got str (from HELEXA_SERVER__MAX_BODY_MB)"


def test_env_unknown_key_is_an_error():
    message = error_of(None, env={"HELEXA_GATEWAY__LISTN": "x"})
    assert message == "<defaults>: $.gateway.listn: unknown key (from HELEXA_GATEWAY__LISTN)"


def test_env_list_index_out_of_range():
    message = error_of(None, env={"HELEXA_NEURONS__3__NAME": "x"})
    assert message == "HELEXA_NEURONS__3__NAME: $.neurons has 0 entries; index 3 is out of range"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:80", ("127.0.0.1", 80)), ("[::1]:0", ("::1", 0)), ("gpu1:13131", ("gpu1", 13131))],
)
def test_parse_listen(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["80", ":80", "host:", "host:99999", "host:x"])
def test_parse_listen_rejects(text):
    with pytest.raises(ValueError, match="expected host:port"):
        parse_listen(text)
