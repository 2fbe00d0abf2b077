"""The Terraform configuration in terraform/ and the tfvars rendered for it.

No AWS API is reachable here, and `terraform validate` needs the AWS provider,
which cannot be downloaded. So these tests check statically what they can:
every file parses, module calls match the called modules' variables,
references resolve, and rendered tfvars fit the root module's variables.
When the terraform binary exists, Terraform itself evaluates the root
variables, their validations and checks.tf (none of which needs a provider),
validates and plans the root wiring with stub modules, renders the boot
module's cloud-config, and checks formatting. checkov runs
when it is installed (it cannot share .venv, see terraform/README.md).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml
from click.testing import CliRunner
from hcl2 import SerializationOptions

from chatmesh.topology_cli import topology as topology_command
from topology.launcher import nats_server_binary
from topology.model import Topology, load_topology, parse_topology
from topology.render import hub_node_config, leaf_config
from topology.terraform import (
    AWS_REGION_BY_NAME,
    NATS_DATA_DIR,
    SUPPORTED_AWS_REGIONS,
    DeployError,
    deployed_topology,
    format_tfvars,
    parse_deploy,
    placeholder_passwords,
    plan_addresses,
    render_nats_configs,
    render_tfvars,
)

REPO = Path(__file__).resolve().parent.parent
TERRAFORM_DIR = REPO / "terraform"
MODULES_DIR = TERRAFORM_DIR / "modules"
EXAMPLES_DIR = TERRAFORM_DIR / "examples"
TOPOLOGIES_DIR = REPO / "topology" / "topologies"
TWO_REGION = TOPOLOGIES_DIR / "two-region.yaml"
THREE_REGION = TOPOLOGIES_DIR / "three-region.yaml"
EXAMPLES = {
    "two-region": (TWO_REGION, EXAMPLES_DIR / "two-region.tfvars.json"),
    "three-region": (THREE_REGION, EXAMPLES_DIR / "three-region.tfvars.json"),
}
# Root files that use variables only, so Terraform evaluates them without the
# AWS provider.
VARIABLES_ONLY_FILES = ("variables.tf", "locals.tf", "checks.tf")
MODULE_META_ARGUMENTS = {"source", "for_each", "count", "providers", "depends_on"}
HCL_OPTIONS = SerializationOptions(
    strip_string_quotes=True, explicit_blocks=False, with_comments=False
)
TERRAFORM = shutil.which("terraform")
CHECKOV = os.environ.get("CHECKOV") or shutil.which("checkov")
needs_terraform = pytest.mark.skipif(
    TERRAFORM is None, reason="the terraform binary is not on PATH"
)


# ---- parsing ------------------------------------------------------------------


@dataclass
class TfModule:
    """The declarations of one Terraform module directory."""

    path: Path
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    locals: set[str] = field(default_factory=set)
    resources: set[str] = field(default_factory=set)
    data_sources: set[str] = field(default_factory=set)
    module_calls: dict[str, dict[str, Any]] = field(default_factory=dict)
    providers: list[dict[str, Any]] = field(default_factory=list)
    code: str = ""


def tf_files() -> list[Path]:
    return sorted(TERRAFORM_DIR.rglob("*.tf"))


def module_dirs() -> list[Path]:
    return [TERRAFORM_DIR, *sorted(p for p in MODULES_DIR.iterdir() if p.is_dir())]


def parse_tf(path: Path) -> dict[str, Any]:
    parsed: dict[str, Any] = hcl2.loads(
        path.read_text(), serialization_options=HCL_OPTIONS
    )
    return parsed


def load_module(path: Path) -> TfModule:
    module = TfModule(path)
    for file in sorted(path.glob("*.tf")):
        parsed = parse_tf(file)
        for block in parsed.get("variable", []):
            module.variables.update(block)
        for block in parsed.get("output", []):
            module.outputs.update(block)
        for block in parsed.get("locals", []):
            module.locals.update(block)
        for block in parsed.get("resource", []):
            for kind, named in block.items():
                module.resources.update(f"{kind}.{name}" for name in named)
        for block in parsed.get("data", []):
            for kind, named in block.items():
                module.data_sources.update(f"{kind}.{name}" for name in named)
        for block in parsed.get("module", []):
            module.module_calls.update(block)
        module.providers.extend(parsed.get("provider", []))
        module.code += strip_comments(file.read_text()) + "\n"
    return module


def strip_comments(text: str) -> str:
    """Remove `#` and `//` comments that are not inside a string literal."""
    lines = []
    for line in text.splitlines():
        in_string = False
        escaped = False
        cut = len(line)
        for index, char in enumerate(line):
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = not in_string
            elif not in_string and (char == "#" or line.startswith("//", index)):
                cut = index
                break
        lines.append(line[:cut])
    return "\n".join(lines)


def called_module(caller: TfModule, call: dict[str, Any]) -> TfModule:
    return load_module((caller.path / call["source"]).resolve())


def module_calls_everywhere() -> Iterator[tuple[TfModule, str, dict[str, Any]]]:
    for path in module_dirs():
        module = load_module(path)
        for name, call in module.module_calls.items():
            yield module, name, call


def required_variables(module: TfModule) -> set[str]:
    return {name for name, block in module.variables.items() if "default" not in block}


def aws_alias(aws_region: str) -> str:
    return aws_region.replace("-", "_")


# ---- rendering helpers --------------------------------------------------------


def shipped_tfvars(name: str) -> dict[str, Any]:
    topology_file, _ = EXAMPLES[name]
    return render_tfvars(load_topology(topology_file))


def two_region_plus(region: dict[str, Any]) -> Topology:
    raw = yaml.safe_load(TWO_REGION.read_text())
    raw["regions"].append(region)
    return parse_topology(raw)


def terraform_env() -> dict[str, str]:
    # CHECKPOINT_DISABLE keeps terraform from calling HashiCorp's version check.
    return {
        **os.environ,
        "TF_CLI_CONFIG_FILE": os.devnull,
        "TF_IN_AUTOMATION": "1",
        "CHECKPOINT_DISABLE": "1",
    }


def run_terraform(
    work_dir: Path, *args: str, check: bool = False
) -> subprocess.CompletedProcess[str]:
    assert TERRAFORM is not None
    result = subprocess.run(
        [TERRAFORM, *args],
        cwd=work_dir,
        env=terraform_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def plan_root_variables(
    tfvars: dict[str, Any], work_dir: Path
) -> subprocess.CompletedProcess[str]:
    """Let Terraform evaluate the root variables and checks.tf for `tfvars`."""
    for name in VARIABLES_ONLY_FILES:
        shutil.copy(TERRAFORM_DIR / name, work_dir / name)
    (work_dir / "input.tfvars.json").write_text(json.dumps(tfvars))
    run_terraform(work_dir, "init", "-input=false", "-no-color", check=True)
    return run_terraform(
        work_dir,
        "plan",
        "-input=false",
        "-no-color",
        "-lock=false",
        "-var-file=input.tfvars.json",
        "-out=plan.out",
    )


def planned_deployment(work_dir: Path) -> dict[str, Any]:
    show_result = run_terraform(work_dir, "show", "-json", "plan.out", check=True)
    value: dict[str, Any] = json.loads(show_result.stdout)["planned_values"]["outputs"][
        "deployment"
    ]["value"]
    return value


# ---- every file and module ----------------------------------------------------


@pytest.mark.parametrize(
    "path", tf_files(), ids=lambda p: str(p.relative_to(TERRAFORM_DIR))
)
def test_tf_file_parses(path: Path) -> None:
    parsed = parse_tf(path)
    assert parsed, f"{path} declares nothing"


@pytest.mark.parametrize("path", module_dirs(), ids=lambda p: p.name)
def test_module_has_readme_and_versions(path: Path) -> None:
    assert (path / "README.md").is_file()
    assert (path / "versions.tf").is_file()


@pytest.mark.parametrize("path", module_dirs(), ids=lambda p: p.name)
def test_variables_typed_and_described(path: Path) -> None:
    module = load_module(path)
    for name, block in module.variables.items():
        assert block.get("description"), (
            f"{path.name}: variable {name} has no description"
        )
        assert "type" in block, f"{path.name}: variable {name} has no type"
        assert not re.search(r"\bany\b", str(block["type"])), (
            f"{path.name}: variable {name} uses the type any"
        )


@pytest.mark.parametrize("path", module_dirs(), ids=lambda p: p.name)
def test_outputs_described(path: Path) -> None:
    module = load_module(path)
    for name, block in module.outputs.items():
        assert block.get("description"), (
            f"{path.name}: output {name} has no description"
        )


def test_module_calls_pass_declared_variables() -> None:
    for caller, name, call in module_calls_everywhere():
        callee = called_module(caller, call)
        arguments = set(call) - MODULE_META_ARGUMENTS
        where = f"{caller.path.name}: module {name}"
        assert required_variables(callee) <= arguments, (
            f"{where} misses {sorted(required_variables(callee) - arguments)}"
        )
        assert arguments <= set(callee.variables), (
            f"{where} passes undeclared {sorted(arguments - set(callee.variables))}"
        )


def test_module_calls_use_declared_providers() -> None:
    root = load_module(TERRAFORM_DIR)
    aliases = {block["aws"]["alias"] for block in root.providers}
    for caller, name, call in module_calls_everywhere():
        callee = called_module(caller, call)
        needs_aws = bool(callee.resources or callee.data_sources)
        if caller.path != TERRAFORM_DIR:
            # Nested modules inherit their caller's provider.
            assert "providers" not in call, f"module {name} passes providers"
            continue
        if not needs_aws:
            assert "providers" not in call, f"module {name} needs no provider"
            continue
        reference = call["providers"]["aws"]
        match = re.fullmatch(r"\$\{aws\.([a-z0-9_]+)\}", reference)
        assert match, f"module {name} passes {reference!r} as aws"
        assert match.group(1) in aliases, (
            f"module {name}: no provider alias {reference}"
        )


@pytest.mark.parametrize("path", module_dirs(), ids=lambda p: p.name)
def test_references_resolve(path: Path) -> None:
    module = load_module(path)
    code = module.code
    for name in set(re.findall(r"\bvar\.([a-z0-9_]+)", code)):
        assert name in module.variables, f"{path.name}: var.{name} is not declared"
    for name in set(re.findall(r"\blocal\.([a-z0-9_]+)", code)):
        assert name in module.locals, f"{path.name}: local.{name} is not defined"
    for kind, name in set(re.findall(r"\bdata\.([a-z0-9_]+)\.([a-z0-9_]+)", code)):
        assert f"{kind}.{name}" in module.data_sources, (
            f"{path.name}: data.{kind}.{name} is not declared"
        )
    for kind, name in set(
        re.findall(r"(?<![\w.])(aws_[a-z0-9_]+)\.([a-z0-9_]+)", code)
    ):
        assert f"{kind}.{name}" in module.resources, (
            f"{path.name}: resource {kind}.{name} is not declared"
        )
    for call, output in set(
        re.findall(r"\bmodule\.([a-z0-9_]+)(?:\[[^\]]*\])?\.([a-z0-9_]+)", code)
    ):
        assert call in module.module_calls, (
            f"{path.name}: module.{call} is not declared"
        )
        callee = called_module(module, module.module_calls[call])
        assert output in callee.outputs, (
            f"{path.name}: module.{call} has no output {output}"
        )


@pytest.mark.parametrize("path", module_dirs(), ids=lambda p: p.name)
def test_variable_attribute_paths_exist(path: Path) -> None:
    """Each `var.x.a[k].b` names attributes that appear in the type of var.x.

    Index steps such as `[k]` are skipped. Terraform with stub modules does not
    evaluate expressions that iterate over module outputs, so this check is the
    one that covers attribute names there.
    """
    module = load_module(path)
    for name, steps in re.findall(
        r"\bvar\.([a-z0-9_]+)((?:\[[^\]]*\]|\.[a-z0-9_]+)+)", module.code
    ):
        type_text = str(module.variables[name]["type"])
        for attribute in re.findall(
            r"\.([a-z0-9_]+)", re.sub(r"\[[^\]]*\]", "", steps)
        ):
            assert re.search(rf"\b{attribute}\s*=", type_text), (
                f"{path.name}: var.{name}{steps}: {attribute!r} is not an "
                f"attribute of the variable's type"
            )


def test_templates_exist() -> None:
    for path in module_dirs():
        code = load_module(path).code
        for template in re.findall(r'templatefile\("\$\{path\.module\}/([^"]+)"', code):
            assert (path / template).is_file(), f"{path.name}: missing {template}"


# ---- providers and the map of regions -----------------------------------------


def test_supported_aws_regions_agree() -> None:
    locals_block = parse_tf(TERRAFORM_DIR / "locals.tf")["locals"][0]
    assert tuple(locals_block["supported_aws_regions"]) == SUPPORTED_AWS_REGIONS


def test_known_region_names_have_providers() -> None:
    for name, aws_region in AWS_REGION_BY_NAME.items():
        assert aws_region in SUPPORTED_AWS_REGIONS, name


def test_every_supported_aws_region_is_wired() -> None:
    root = load_module(TERRAFORM_DIR)
    providers = {block["aws"]["alias"]: block["aws"] for block in root.providers}
    assert set(providers) == {"hub"} | {aws_alias(r) for r in SUPPORTED_AWS_REGIONS}
    assert providers["hub"]["region"] == "${var.hub.aws_region}"
    main_locals = parse_tf(TERRAFORM_DIR / "main.tf")["locals"][0]
    for aws_region in SUPPORTED_AWS_REGIONS:
        alias = aws_alias(aws_region)
        assert providers[alias]["region"] == aws_region
        for layer, source in (
            ("network", "./modules/network"),
            ("region", "./modules/region"),
            ("peering", "./modules/peering"),
        ):
            call = root.module_calls[f"{layer}_{alias}"]
            assert call["source"] == source
            assert call["providers"] == {"aws": f"${{aws.{alias}}}"}
            assert call["for_each"] == (
                f'${{local.regions_by_aws_region["{aws_region}"]}}'
            )
        assert f"module.network_{alias}" in main_locals["networks"]
        assert f"module.region_{alias}" in main_locals["region_outputs"]


def test_layers_never_read_later_layers() -> None:
    """Network modules read no region module, region modules no peering module.

    A module block with for_each that is read as a whole depends on all of
    its resources, so a later layer feeding an earlier one is a cycle.
    """
    root = load_module(TERRAFORM_DIR)
    for name, call in root.module_calls.items():
        arguments = json.dumps({k: v for k, v in call.items() if k != "source"})
        if name.startswith("network_") or name == "hub_network":
            assert "module.region_" not in arguments, name
            assert "local.networks" not in arguments, name
            assert "local.region_outputs" not in arguments, name
        if name.startswith(("network_", "region_")) or name in {"hub", "hub_network"}:
            assert "module.peering_" not in arguments, name
            assert "module.hub_peering" not in arguments, name
            assert "local.peering_requests" not in arguments, name
            assert "local.region_outputs" not in arguments, name


# ---- rendered tfvars ----------------------------------------------------------


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_tfvars_match_topology(example: str) -> None:
    topology_file, _ = EXAMPLES[example]
    topology = load_topology(topology_file)
    tfvars = render_tfvars(topology)

    assert tfvars["name"] == topology.name
    assert list(tfvars["regions"]) == [r.name for r in topology.regions]
    assert list(tfvars["hub"]["nodes"]) == [n.name for n in topology.hub.nodes]
    assert tfvars["hub"]["stream_replicas"] == topology.hub.stream_replicas
    assert len(tfvars["hub"]["core_workers"]) == topology.core.workers
    assert tfvars["store"]["backend"] == topology.store.backend
    for region in topology.regions:
        rendered = tfvars["regions"][region.name]
        assert list(rendered["edges"]) == [e.name for e in region.edges]
        assert len(rendered["edges"]) == len(region.edges)
        store = rendered["store"]
        assert store["replication_factor"] == region.store_replication_factor
        expected_nodes = (
            region.store_replication_factor if topology.store.backend == "scylla" else 0
        )
        assert len(store["nodes"]) == expected_nodes
        assert rendered["aws_region"] == AWS_REGION_BY_NAME[region.name]


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_tfvars_keys_match_root_variables(example: str) -> None:
    root = load_module(TERRAFORM_DIR)
    keys = set(shipped_tfvars(example))
    assert required_variables(root) <= keys, sorted(required_variables(root) - keys)
    assert keys <= set(root.variables), sorted(keys - set(root.variables))


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_nats_configs_come_from_renderer(example: str) -> None:
    topology_file, _ = EXAMPLES[example]
    topology = load_topology(topology_file)
    tfvars = render_tfvars(topology)
    deployed = deployed_topology(topology, plan_addresses(topology, parse_deploy({})))

    for node in deployed.hub.nodes:
        rendered = json.loads(tfvars["hub"]["nodes"][node.name]["nats_config"])
        passwords = placeholder_passwords(deployed)
        assert rendered == hub_node_config(deployed, node, NATS_DATA_DIR, passwords)
        assert rendered["jetstream"]["domain"] == "hub"
    for region in deployed.regions:
        secret = "CHATMESH_NATS_PASSWORD_LEAF_" + region.name.replace("-", "_").upper()
        hub_leaf_urls = [
            f"nats-leaf://leaf-{region.name}:{secret}@{n['private_ip']}:{n['leaf_port']}"
            for n in tfvars["hub"]["nodes"].values()
        ]
        leaf = tfvars["regions"][region.name]["leaf"]
        rendered = json.loads(leaf["nats_config"])
        passwords = placeholder_passwords(deployed)
        assert rendered == leaf_config(deployed, region, NATS_DATA_DIR, passwords)
        assert rendered["jetstream"]["sync_interval"] == "always"
        assert rendered["jetstream"]["domain"] == region.name
        assert rendered["listen"] == f"{leaf['private_ip']}:{leaf['client_port']}"
        assert rendered["leafnodes"]["remotes"][0]["urls"] == hub_leaf_urls


def test_hub_routes_name_other_nodes() -> None:
    tfvars = shipped_tfvars("three-region")
    nodes = tfvars["hub"]["nodes"]
    for name, node in nodes.items():
        cluster = json.loads(node["nats_config"])["cluster"]
        expected = [
            "nats-route://route:CHATMESH_NATS_PASSWORD_ROUTE@"
            f"{peer['private_ip']}:{peer['cluster_port']}"
            for peer_name, peer in nodes.items()
            if peer_name != name
        ]
        assert cluster["routes"] == expected
        assert cluster["listen"] == f"{node['private_ip']}:{node['cluster_port']}"


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_nats_configs_pass_nats_server_check(example: str, tmp_path: Path) -> None:
    topology_file, _ = EXAMPLES[example]
    configs = render_nats_configs(load_topology(topology_file))
    for name, config in configs.items():
        path = tmp_path / f"{name}.conf"
        path.write_text(json.dumps(config))
        result = subprocess.run(
            [nats_server_binary(), "-t", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, f"{name}: {result.stderr}"


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_topology_json_names_private_addresses(example: str) -> None:
    tfvars = shipped_tfvars(example)
    deployed = parse_topology(json.loads(tfvars["topology_json"]))

    for node in deployed.hub.nodes:
        assert node.host == tfvars["hub"]["nodes"][node.name]["private_ip"]
        assert node.client_port == tfvars["hub"]["nodes"][node.name]["client_port"]
    store_ips = []
    for region in deployed.regions:
        rendered = tfvars["regions"][region.name]
        assert region.leaf.host == rendered["leaf"]["private_ip"]
        assert region.leaf.client_port == rendered["leaf"]["client_port"]
        for edge in region.edges:
            assert edge.host == rendered["edges"][edge.name]["private_ip"]
            assert edge.port == rendered["edges"][edge.name]["port"]
        store_ips += [n["private_ip"] for n in rendered["store"]["nodes"].values()]
    assert deployed.store.scylla.local_nodes is False
    if deployed.store.backend == "scylla":
        assert deployed.store.scylla.contact_points == store_ips


def test_zero_ports_get_production_defaults() -> None:
    tfvars = shipped_tfvars("three-region")
    for node in tfvars["hub"]["nodes"].values():
        assert (node["client_port"], node["cluster_port"]) == (4222, 6222)
        assert (node["leaf_port"], node["monitor_port"]) == (7422, 8222)
    for region in tfvars["regions"].values():
        assert region["leaf"]["client_port"] == 4222
        assert region["leaf"]["monitor_port"] == 8222
        assert {edge["port"] for edge in region["edges"].values()} == {8101}
    assert tfvars["store"]["port"] == 9042
    assert tfvars["store"]["storage_port"] == 7000


def test_ports_set_in_topology_are_kept() -> None:
    tfvars = shipped_tfvars("two-region")
    assert tfvars["regions"]["eu-west"]["leaf"]["client_port"] == 4223
    assert tfvars["regions"]["us-east"]["leaf"]["monitor_port"] == 8224
    assert tfvars["regions"]["us-east"]["edges"]["us-east-1"]["port"] == 8201


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_example_tfvars_are_current(example: str) -> None:
    topology_file, example_file = EXAMPLES[example]
    rendered = render_tfvars(load_topology(topology_file))
    assert json.loads(example_file.read_text()) == rendered, (
        f"{example_file} is stale; rerun: chatmesh topology render --terraform "
        f"--topology {topology_file.relative_to(REPO)} "
        f"--out {example_file.relative_to(REPO)}"
    )
    assert example_file.read_text() == format_tfvars(rendered)


def test_third_region_keeps_existing_addresses() -> None:
    before = render_tfvars(load_topology(TWO_REGION))
    after = render_tfvars(
        two_region_plus({"name": "ap-south", "edges": [{"name": "ap-south-1"}]})
    )

    assert list(after["regions"]) == ["eu-west", "us-east", "ap-south"]
    added = after["regions"]["ap-south"]
    assert added["aws_region"] == "ap-south-1"
    assert added["network"]["vpc_cidr"] == "10.3.0.0/16"
    assert added["network"]["availability_zones"][0] == "ap-south-1a"
    for name in ("eu-west", "us-east"):
        assert after["regions"][name]["network"] == before["regions"][name]["network"]
        assert after["regions"][name]["edges"] == before["regions"][name]["edges"]
        assert after["regions"][name]["leaf"] == before["regions"][name]["leaf"]
    # The hub's config gains the new region's leaf user; its addresses stay.
    for name, node in after["hub"]["nodes"].items():
        old = before["hub"]["nodes"][name]
        assert {k: v for k, v in node.items() if k != "nats_config"} == {
            k: v for k, v in old.items() if k != "nats_config"
        }
    assert "leaf-ap-south" in after["hub"]["nodes"]["hub-1"]["nats_config"]
    root = load_module(TERRAFORM_DIR)
    assert set(after) <= set(root.variables)


def test_removed_region_keeps_pinned_cidrs() -> None:
    three = load_topology(THREE_REGION)
    before = render_tfvars(three)
    raw = three.model_dump()
    raw["regions"] = [r for r in raw["regions"] if r["name"] != "us-east"]
    pinned = {"regions": {"ap-south": {"vpc_cidr": "10.3.0.0/16"}}}

    after = render_tfvars(parse_topology(raw), pinned)

    assert list(after["regions"]) == ["eu-west", "ap-south"]
    assert after["regions"]["ap-south"] == before["regions"]["ap-south"]
    unpinned = render_tfvars(parse_topology(raw))
    assert unpinned["regions"]["ap-south"]["network"]["vpc_cidr"] == "10.2.0.0/16"


# ---- deploy settings ----------------------------------------------------------


def test_deploy_settings_reach_tfvars() -> None:
    deploy = {
        "hub_aws_region": "us-east-1",
        "public_zone": "chat.example.org",
        "endpoint_name": "ws",
        "token_secret_parameter": "/prod/chatmesh/token",
        "monitoring_cidrs": ["10.200.0.0/16"],
        "instance_types": {"edge": "c7i.xlarge", "store": "i4i.2xlarge"},
        "volume_sizes_gib": {"jetstream": 200},
        "zone_count": 2,
        "regions": {
            "eu-west": {
                "vpc_cidr": "10.50.0.0/20",
                "access_logs_bucket": "logs-eu-west",
                "load_balancer_deletion_protection": False,
            },
        },
        "tags": {"team": "chat"},
    }
    tfvars = render_tfvars(load_topology(THREE_REGION), deploy)

    assert tfvars["hub"]["aws_region"] == "us-east-1"
    assert tfvars["hub"]["network"]["availability_zones"] == [
        "us-east-1a",
        "us-east-1b",
    ]
    assert tfvars["dns"] == {"zone_name": "chat.example.org", "endpoint_name": "ws"}
    assert tfvars["token_secret_parameter"] == "/prod/chatmesh/token"
    assert tfvars["monitoring_cidrs"] == ["10.200.0.0/16"]
    assert tfvars["tags"] == {"team": "chat"}
    eu_west = tfvars["regions"]["eu-west"]
    assert eu_west["edge_instance_type"] == "c7i.xlarge"
    assert eu_west["store"]["instance_type"] == "i4i.2xlarge"
    assert eu_west["leaf"]["jetstream_volume_gib"] == 200
    assert eu_west["network"]["vpc_cidr"] == "10.50.0.0/20"
    assert eu_west["network"]["private_subnet_cidrs"] == [
        "10.50.8.0/24",
        "10.50.9.0/24",
    ]
    assert eu_west["load_balancer"] == {
        "access_logs_bucket": "logs-eu-west",
        "deletion_protection": False,
    }
    assert "load_balancer" not in tfvars["regions"]["us-east"]


def test_hub_follows_core_store_region() -> None:
    raw = load_topology(THREE_REGION).model_dump()
    raw["core"]["store_region"] = "ap-south"
    tfvars = render_tfvars(parse_topology(raw))
    assert tfvars["hub"]["aws_region"] == "ap-south-1"


@pytest.mark.parametrize(
    ("deploy", "message"),
    [
        ({"regions": {"mars": {}}}, "unknown region(s) mars"),
        ({"regions": {"eu-west": {"aws_region": "sa-east-1"}}}, "'sa-east-1'"),
        ({"hub_aws_region": "sa-east-1"}, "hub_aws_region"),
        ({"regions": {"us-east": {"vpc_cidr": "10.1.0.0/16"}}}, "overlap"),
        ({"hub_vpc_cidr": "10.0.0.0/8"}, "/8"),
        ({"regions": {"eu-west": {"store_nodes": 2}}}, "below"),
        (
            {"regions": {"eu-west": {"availability_zones": ["us-east-1a"] * 3}}},
            "different zones",
        ),
        (
            {"regions": {"eu-west": {"availability_zones": ["a", "b", "c"]}}},
            "outside eu-west-1",
        ),
        ({"zone_count": 5}, "zone_count"),
        ({"public_zone": "Chat.Example.com."}, "public_zone"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_invalid_deploy_settings_rejected(deploy: dict[str, Any], message: str) -> None:
    with pytest.raises(DeployError) as caught:
        render_tfvars(load_topology(THREE_REGION), deploy)
    assert message in str(caught.value)


def test_region_without_known_aws_region_rejected() -> None:
    topology = two_region_plus({"name": "mars", "edges": [{"name": "mars-1"}]})
    with pytest.raises(DeployError) as caught:
        render_tfvars(topology)
    assert "regions.mars.aws_region" in str(caught.value)
    named = render_tfvars(topology, {"regions": {"mars": {"aws_region": "us-east-1"}}})
    assert named["regions"]["mars"]["aws_region"] == "us-east-1"


def test_too_many_edges_rejected() -> None:
    edges = [{"name": f"ap-south-{i}"} for i in range(1, 242)]
    topology = two_region_plus({"name": "ap-south", "edges": edges})
    with pytest.raises(DeployError) as caught:
        render_tfvars(topology)
    assert "edge ap-south-241" in str(caught.value)


# ---- Terraform evaluates the root variables -----------------------------------


@needs_terraform
@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_root_variables_accept_tfvars(example: str, tmp_path: Path) -> None:
    tfvars = shipped_tfvars(example)
    result = plan_root_variables(tfvars, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "undeclared variable" not in output

    deployment = planned_deployment(tmp_path)
    assert sorted(deployment["regions"]) == sorted(tfvars["regions"])
    for name, region in tfvars["regions"].items():
        assert deployment["regions"][name]["edges"] == sorted(region["edges"])
        assert deployment["regions"][name]["store_nodes"] == sorted(
            region["store"]["nodes"]
        )


@needs_terraform
def test_root_accepts_added_third_region(tmp_path: Path) -> None:
    tfvars = render_tfvars(
        two_region_plus({"name": "ap-south", "edges": [{"name": "ap-south-1"}]})
    )
    result = plan_root_variables(tfvars, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr

    deployment = planned_deployment(tmp_path)
    assert deployment["regions_by_aws_region"] == {
        "ap-south-1": ["ap-south"],
        "eu-west-1": ["eu-west"],
        "us-east-1": ["us-east"],
    }


@needs_terraform
def test_root_groups_regions_by_aws_region(tmp_path: Path) -> None:
    topology = two_region_plus({"name": "eu-north", "edges": [{"name": "eu-north-1"}]})
    tfvars = render_tfvars(
        topology, {"regions": {"eu-north": {"aws_region": "eu-west-1"}}}
    )
    result = plan_root_variables(tfvars, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    deployment = planned_deployment(tmp_path)
    assert deployment["regions_by_aws_region"]["eu-west-1"] == ["eu-north", "eu-west"]


def broken(change: Any) -> dict[str, Any]:
    tfvars = copy.deepcopy(shipped_tfvars("three-region"))
    change(tfvars)
    return tfvars


@needs_terraform
@pytest.mark.parametrize(
    ("tfvars", "message"),
    [
        pytest.param(
            broken(lambda t: t["regions"]["us-east"].update(aws_region="sa-east-1")),
            "Every regions.*.aws_region must be one of",
            id="unsupported-aws-region",
        ),
        pytest.param(
            broken(lambda t: t["regions"].update(EU=t["regions"].pop("eu-west"))),
            "Every region name must be",
            id="bad-region-name",
        ),
        pytest.param(
            broken(
                lambda t: t["regions"]["us-east"]["network"].update(
                    vpc_cidr="10.2.0.0/33"
                )
            ),
            "vpc_cidr must be an IPv4 CIDR",
            id="invalid-cidr",
        ),
        pytest.param(
            broken(lambda t: t["hub"]["network"].update(vpc_cidr="10.1.0.0/16")),
            "VPC CIDRs overlap",
            id="overlapping-vpcs",
        ),
        pytest.param(
            broken(
                lambda t: t["regions"]["us-east"]["edges"]["us-east-1"].update(
                    private_ip="10.9.0.20"
                )
            ),
            "regions.us-east.edges.us-east-1 (10.9.0.20)",
            id="address-outside-subnet",
        ),
        pytest.param(
            broken(
                lambda t: t["regions"]["us-east"]["edges"]["us-east-1"].update(
                    private_ip="10.2.128.1"
                )
            ),
            "not usable addresses",
            id="reserved-address",
        ),
        pytest.param(
            broken(lambda t: t["regions"]["us-east"]["store"].update(nodes={})),
            "us-east has 0 store node(s) for replication factor 3",
            id="too-few-store-nodes",
        ),
        pytest.param(
            broken(
                lambda t: t["regions"]["us-east"]["network"].update(
                    availability_zones=["eu-west-1a", "eu-west-1b", "eu-west-1c"]
                )
            ),
            "availability zones of the region's aws_region",
            id="zones-of-other-region",
        ),
        pytest.param(
            broken(
                lambda t: t.update(
                    topology_json=json.dumps({"hub": {"nodes": []}, "regions": []})
                )
            ),
            "topology_json names other regions",
            id="topology-of-other-deployment",
        ),
    ],
)
def test_root_variables_reject_bad_input(
    tfvars: dict[str, Any], message: str, tmp_path: Path
) -> None:
    result = plan_root_variables(tfvars, tmp_path)
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0
    assert message in output, output


# ---- root wiring with stub modules -----------------------------------------------


def write_stub_module(source: TfModule, target: Path) -> None:
    """Write a module with the variables and outputs of `source` and no AWS resources.

    Every stub output depends on every stub variable, the most a real output
    can, so a dependency cycle between the real modules is also one between
    the stubs. Variable types are the real ones, so values the root module
    passes must convert to them.
    """
    target.mkdir(parents=True)
    blocks = []
    for name, block in source.variables.items():
        lines = [f'variable "{name}" {{', f"  type = {unwrap(block['type'])}"]
        if "default" in block:
            lines.append(f"  default = {json.dumps(block['default'])}")
        blocks.append("\n".join([*lines, "}"]))
    inputs = ", ".join(f"var.{name}" for name in source.variables)
    blocks.append(f'resource "terraform_data" "inputs" {{\n  input = [{inputs}]\n}}')
    # The id is unknown until apply, and decoding it yields an unknown value
    # of any type, which converts to whatever the caller's variable expects.
    output_value = "jsondecode(terraform_data.inputs.id)"
    for name in source.outputs:
        blocks.append(f'output "{name}" {{\n  value = {output_value}\n}}')
    (target / "main.tf").write_text("\n\n".join(blocks) + "\n")


def unwrap(expression: str) -> str:
    """Return the HCL expression that python-hcl2 wrapped in `${...}`."""
    if expression.startswith("${") and expression.endswith("}"):
        return expression[2:-1]
    return expression


def write_stub_root(work_dir: Path) -> None:
    """Copy the root module with stub modules, no providers and no data source."""
    root = load_module(TERRAFORM_DIR)
    for call in root.module_calls.values():
        target = work_dir / call["source"]
        if not target.exists():
            write_stub_module(called_module(root, call), target)
    for name in (*VARIABLES_ONLY_FILES, "outputs.tf"):
        shutil.copy(TERRAFORM_DIR / name, work_dir / name)
    main = (TERRAFORM_DIR / "main.tf").read_text()
    main = re.sub(r"(?m)^\s*providers\s*=\s*\{ aws = aws\.[a-z0-9_]+ \}\n", "", main)
    main = re.sub(r'(?ms)^data "aws_route53_zone" "public" \{.*?^\}\n', "", main)
    main = main.replace("data.aws_route53_zone.public.zone_id", '"Z0STUBZONE"')
    assert "aws." not in strip_comments(main), "main.tf still names a provider"
    (work_dir / "main.tf").write_text(main)


@needs_terraform
def test_root_wiring_validates_with_stubs(tmp_path: Path) -> None:
    write_stub_root(tmp_path)
    run_terraform(tmp_path, "init", "-input=false", "-no-color", check=True)
    result = run_terraform(tmp_path, "validate", "-no-color")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Cycle" not in result.stdout + result.stderr


@needs_terraform
@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_root_wiring_plans_with_stubs(example: str, tmp_path: Path) -> None:
    write_stub_root(tmp_path)
    (tmp_path / "input.tfvars.json").write_text(json.dumps(shipped_tfvars(example)))
    run_terraform(tmp_path, "init", "-input=false", "-no-color", check=True)
    result = run_terraform(
        tmp_path,
        "plan",
        "-input=false",
        "-no-color",
        "-lock=false",
        "-var-file=input.tfvars.json",
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---- boot module: cloud-config rendered by Terraform --------------------------


def render_boot(work_dir: Path, arguments: str) -> subprocess.CompletedProcess[str]:
    source = os.path.relpath(MODULES_DIR / "boot", work_dir)
    (work_dir / "main.tf").write_text(
        f'module "boot" {{\n  source = "{source}"\n{arguments}\n}}\n'
        'output "user_data" {\n  value = module.boot.user_data\n}\n'
    )
    run_terraform(work_dir, "init", "-input=false", "-no-color", check=True)
    return run_terraform(
        work_dir, "apply", "-input=false", "-no-color", "-auto-approve"
    )


def user_data_of(work_dir: Path) -> str:
    show_result = run_terraform(work_dir, "output", "-json", "user_data", check=True)
    value: str = json.loads(show_result.stdout)
    return value


@needs_terraform
def test_boot_module_renders_cloud_config(tmp_path: Path) -> None:
    result = render_boot(
        tmp_path,
        """
  files = {
    "/etc/nats/nats-server.conf" = {
      content     = "{}\\n"
      owner       = "nats"
      permissions = "0640"
    }
  }
  data_volume = {
    volume_id   = "vol-0123456789abcdef0"
    mount_point = "/var/lib/nats"
    owner       = "nats"
  }
  commands = ["echo ready"]
  services = {
    nats-server = {
      description    = "NATS test"
      user           = "nats"
      exec_start_pre = "/bin/true"
      exec_start     = "/usr/local/bin/nats-server -c /etc/nats/nats-server.conf"
    }
  }
""",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    user_data = user_data_of(tmp_path)
    assert user_data.startswith("#cloud-config\n")
    cloud_config = yaml.safe_load(user_data)
    files = {item["path"]: item for item in cloud_config["write_files"]}

    assert files["/etc/nats/nats-server.conf"]["owner"] == "nats:nats"
    assert files["/etc/nats/nats-server.conf"]["permissions"] == "0640"
    unit = files["/etc/systemd/system/nats-server.service"]["content"]
    assert "User=nats\n" in unit
    assert "ExecStartPre=/bin/true\n" in unit
    assert (
        "ExecStart=/usr/local/bin/nats-server -c /etc/nats/nats-server.conf\n" in unit
    )
    mount_script = files["/usr/local/sbin/chatmesh-mount-data"]
    assert mount_script["permissions"] == "0755"
    assert (
        "nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0"
        in mount_script["content"]
    )
    assert 'mkdir -p "/var/lib/nats"' in mount_script["content"]
    syntax = subprocess.run(
        ["bash", "-n"], input=mount_script["content"], capture_output=True, text=True
    )
    assert syntax.returncode == 0, syntax.stderr
    assert cloud_config["runcmd"] == [
        "/usr/local/sbin/chatmesh-mount-data",
        "echo ready",
        "systemctl daemon-reload",
        "systemctl enable --now nats-server.service",
    ]


@needs_terraform
def test_boot_module_without_volume_or_services(tmp_path: Path) -> None:
    result = render_boot(tmp_path, '  commands = ["echo only"]')
    assert result.returncode == 0, result.stdout + result.stderr
    cloud_config = yaml.safe_load(user_data_of(tmp_path))
    assert cloud_config["write_files"] == []
    assert cloud_config["runcmd"] == ["echo only"]


@needs_terraform
def test_boot_module_rejects_oversized_user_data(tmp_path: Path) -> None:
    result = render_boot(
        tmp_path,
        '  files = { "/etc/big" = { content = "' + "x" * 17000 + '" } }',
    )
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0
    assert "more than the 16384 bytes EC2 accepts" in output


@needs_terraform
def test_edge_user_data_fits_ec2_limit(tmp_path: Path) -> None:
    """An edge of the largest example carries the whole topology JSON."""
    tfvars = shipped_tfvars("three-region")
    (tmp_path / "topology.json").write_text(tfvars["topology_json"])
    # The same command lines as modules/region/instances.tf renders.
    fetch_secret = (
        "/bin/sh -c 'umask 077 && aws ssm get-parameter --region eu-west-1 "
        f"--name {tfvars['token_secret_parameter']} --with-decryption "
        "--query Parameter.Value --output text "
        "> /var/lib/chatmesh/secrets/token.key'"
    )
    run_edge = (
        "/opt/chatmesh/bin/chatmesh edge --topology /etc/chatmesh/topology.json "
        "--run-dir /var/lib/chatmesh --edge eu-west-1"
    )
    result = render_boot(
        tmp_path,
        f"""
  files = {{ "/etc/chatmesh/topology.json" = {{ content = file("topology.json") }} }}
  services = {{
    chatmesh-edge = {{
      description    = "chatmesh edge"
      user           = "chatmesh"
      exec_start_pre = {json.dumps(fetch_secret)}
      exec_start     = {json.dumps(run_edge)}
    }}
  }}
""",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    cloud_config = yaml.safe_load(user_data_of(tmp_path))
    files = {item["path"]: item for item in cloud_config["write_files"]}
    assert json.loads(files["/etc/chatmesh/topology.json"]["content"]) == json.loads(
        tfvars["topology_json"]
    )


# ---- formatting and static security scan --------------------------------------


@needs_terraform
def test_terraform_fmt_clean() -> None:
    result = run_terraform(TERRAFORM_DIR, "fmt", "-check", "-recursive", "-diff", ".")
    assert result.returncode == 0, (
        f"run terraform fmt -recursive terraform/:\n{result.stdout}"
    )


def test_checkov_skips_have_reasons() -> None:
    lines = (TERRAFORM_DIR / ".checkov.yaml").read_text().splitlines()
    config = yaml.safe_load("\n".join(lines))
    for check_id in config["skip-check"]:
        index = lines.index(f"  - {check_id}")
        reason = lines[index - 1].strip()
        assert reason.startswith("# ") and len(reason) > 20, check_id


def test_checkov_finds_no_failures() -> None:
    assert CHECKOV is not None, (
        "checkov not found: run the tests with `make test`, which installs it in "
        ".venv-tools, or set CHECKOV to a checkov executable (terraform/README.md)"
    )
    result = subprocess.run(
        [
            CHECKOV,
            "-d",
            str(TERRAFORM_DIR),
            "--config-file",
            str(TERRAFORM_DIR / ".checkov.yaml"),
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        # Without this, checkov queries PyPI for a newer version of itself.
        env={**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true"},
    )
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [
        f"{check['check_id']} {check['resource']} ({check['file_path']})"
        for item in reports
        for check in item["results"]["failed_checks"]
    ]
    assert failed == []
    assert sum(item["summary"]["passed"] for item in reports) > 0


# ---- command line -------------------------------------------------------------


def test_cli_render_terraform_to_stdout() -> None:
    result = CliRunner().invoke(topology_command, ["render", "--terraform"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == render_tfvars(load_topology(TWO_REGION))


def test_cli_render_terraform_with_deploy_file(tmp_path: Path) -> None:
    deploy_file = tmp_path / "deploy.yaml"
    deploy_file.write_text("public_zone: chat.example.net\nhub_aws_region: us-east-1\n")
    out = tmp_path / "out" / "prod.tfvars.json"
    result = CliRunner().invoke(
        topology_command,
        [
            "render",
            "--terraform",
            "--topology",
            str(THREE_REGION),
            "--deploy",
            str(deploy_file),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    tfvars = json.loads(out.read_text())
    assert tfvars["dns"]["zone_name"] == "chat.example.net"
    assert tfvars["hub"]["aws_region"] == "us-east-1"


def test_cli_render_rejects_bad_deploy_file(tmp_path: Path) -> None:
    deploy_file = tmp_path / "deploy.yaml"
    deploy_file.write_text("regions:\n  mars: {}\n")
    result = CliRunner().invoke(
        topology_command, ["render", "--terraform", "--deploy", str(deploy_file)]
    )
    assert result.exit_code == 1
    assert "unknown region(s) mars" in result.output


def test_cli_render_nats_writes_every_config(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        topology_command,
        ["render", "--nats", "--topology", str(THREE_REGION), "--out", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    written = sorted(path.name for path in tmp_path.iterdir())
    assert written == [
        "hub-1.conf",
        "hub-2.conf",
        "hub-3.conf",
        "leaf-ap-south.conf",
        "leaf-eu-west.conf",
        "leaf-us-east.conf",
    ]
    tfvars = shipped_tfvars("three-region")
    leaf = json.loads((tmp_path / "leaf-eu-west.conf").read_text())
    assert leaf == json.loads(tfvars["regions"]["eu-west"]["leaf"]["nats_config"])


def test_cli_render_needs_a_target() -> None:
    result = CliRunner().invoke(topology_command, ["render"])
    assert result.exit_code == 2
    assert "--terraform or --nats" in result.output


def test_cli_render_nats_needs_out() -> None:
    result = CliRunner().invoke(topology_command, ["render", "--nats"])
    assert result.exit_code == 2
    assert "--out DIR" in result.output


def test_cli_check_prints_summary() -> None:
    result = CliRunner().invoke(topology_command, ["check", str(THREE_REGION)])
    assert result.exit_code == 0, result.output
    assert "topology three-region is valid" in result.output
    assert "hub: 3 node(s) (hub-1, hub-2, hub-3), stream replicas 3" in result.output
    assert "ap-south: 2 edge(s) (ap-south-1, ap-south-2)" in result.output
    assert "store: scylla, keyspace chatmesh" in result.output


def test_cli_check_names_bad_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    raw = yaml.safe_load(THREE_REGION.read_text())
    raw["hub"]["stream_replicas"] = 9
    bad.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(topology_command, ["check", str(bad)])
    assert result.exit_code == 1
    assert "hub.stream_replicas" in result.output
    assert str(bad) in result.output
