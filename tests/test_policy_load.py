"""Policy files: malformed ones are refused with file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from stockade.errors import UsageError
from stockade.policy import PolicyError, load_policy, loads_policy
from stockade.policy._locate import dotted, key_lines, line_of
from stockade.policy.rules import AnyOf, BytesIn, MaxAge, Not, OnPlatform, PlatformIn

HEAD = 'version = 1\nplatforms = ["snp", "tdx", "sgx"]\n'


def error(text: str, source: str = "deploy.toml") -> PolicyError:
    with pytest.raises(PolicyError) as info:
        loads_policy(text, source)
    err = info.value
    assert isinstance(err, UsageError) and err.exit_code == 2
    return err


@pytest.mark.parametrize(
    ("text", "line", "key", "problem"),
    [
        # unknown keys, at every level
        (HEAD + "colour = 1\n", 3, "colour", "unknown key"),
        (
            HEAD + "[snp]\nproducts = ['Milan']\nmin_tcb = { bootloader = 4, ucode = 200 }\n",
            5,
            "snp.min_tcb.ucode",
            "did you mean 'microcode'?",
        ),
        (HEAD + "[snp]\nguest_policy = { smt = false }\n", 4, "snp.guest_policy.smt", "unknown key"),
        (HEAD + "[tdx]\nmrtdd = []\n", 4, "tdx.mrtdd", "did you mean 'mrtd'?"),
        (HEAD + "[snp]\nplatforms = ['snp']\n", 4, "snp.platforms", "belongs outside the [snp] table"),
        (HEAD + "[sgx]\nmrtd = []\n", 4, "sgx.mrtd", "unknown key"),
        (
            HEAD + "[tdx]\ntd_attributes = { septve = true }\n",
            4,
            "tdx.td_attributes.septve",
            "did you mean 'sept_ve_disable'?",
        ),
        (HEAD + "[sgx]\nattributes = { debug = 1 }\n", 4, "sgx.attributes.debug", "expected true or false"),
        (
            HEAD + "[[any_of]]\nsnp.products = ['Milan']\n[[any_of]]\n[any_of.tdx]\nfmspcs = []\n",
            7,
            "any_of[1].tdx.fmspcs",
            "unknown key",
        ),
        (
            HEAD
            + "any_of = [\n  { snp = { products = ['Milan'] } },\n  { snp = { prodcts = ['Genoa'] } },\n]\n",
            5,
            "any_of[1].snp.prodcts",
            "did you mean 'products'?",
        ),
        (
            HEAD + "not = { snp = { tcb_status = ['UpToDate'] } }\n",
            3,
            "not.snp.tcb_status",
            "in a [snp] table",
        ),
        # wrong types
        (
            HEAD + "[snp]\nmin_tcb.microcode = '219'\n",
            4,
            "snp.min_tcb.microcode",
            "expected an integer from 0 to 255, got string '219'",
        ),
        (HEAD + "[snp]\nvmpl = [true]\n", 4, "snp.vmpl[0]", "got boolean True"),
        (HEAD + "[snp]\nvmpl = [4]\n", 4, "snp.vmpl[0]", "out of range"),
        (HEAD + "allow_debug = 'no'\n", 3, "allow_debug", "expected true or false"),
        (HEAD + "[snp]\nproducts = 'Milan'\n", 4, "snp.products", "expected an array of strings, got string"),
        (HEAD + "[snp]\nproducts = [1]\n", 4, "snp.products[0]", "expected a string"),
        (HEAD + "snp = ['Milan']\n", 3, "snp", "expected a table"),
        (HEAD + "any_of = { snp = {} }\n", 3, "any_of", "expected an array of tables"),
        (HEAD + "not = [{ platforms = ['snp'] }]\n", 3, "not", "expected a table"),
        (HEAD + "[snp]\nmin_firmware = 1.55\n", 4, "snp.min_firmware", "expected a version string"),
        (HEAD + "[snp]\nmin_firmware = 'latest'\n", 4, "snp.min_firmware", "not a version"),
        (HEAD + "max_age = '1 week'\n", 3, "max_age", "not a duration"),
        (HEAD + "max_age = 0\n", 3, "max_age", "must be positive"),
        (HEAD + "name = 7\n", 3, "name", "expected a non-empty string"),
        ('version = "1"\nplatforms = ["snp"]\n', 1, "version", "expected an integer"),
        ('version = 2\nplatforms = ["snp"]\n', 1, "version", "unsupported policy version 2"),
        # hex of the wrong length, or not hex
        (HEAD + "measurements = [\n  '00',\n]\n", 4, "measurements[0]", "got 1 byte (2 hex digits)"),
        (
            HEAD + f"[snp]\nmeasurements = ['{'ab' * 32}']\n",
            4,
            "snp.measurements[0]",
            "expected 48 bytes (96 hex digits), got 32 bytes",
        ),
        (HEAD + f"[sgx]\nmrenclave = ['{'ab' * 48}']\n", 4, "sgx.mrenclave[0]", "expected 32 bytes"),
        (HEAD + f"[snp]\nhost_data = ['{'ab' * 31}']\n", 4, "snp.host_data[0]", "expected 32 bytes"),
        (HEAD + f"[snp]\nchip_ids = ['{'ab' * 8}']\n", 4, "snp.chip_ids[0]", "expected 64 bytes"),
        (HEAD + "[tdx]\nfmspc = ['00806f05']\n", 4, "tdx.fmspc[0]", "expected 6 bytes"),
        (HEAD + "[tdx]\nrtmr0 = ['xyz']\n", 4, "tdx.rtmr0[0]", "not hex"),
        # empty allow lists and tables
        (HEAD + "[snp]\nproducts = []\n", 4, "snp.products", "empty allow list"),
        ("version = 1\nplatforms = []\n", 2, "platforms", "empty allow list"),
        (HEAD + "[tdx]\nmrtd = []\n", 4, "tdx.mrtd", "empty allow list"),
        (HEAD + "[snp]\nmin_tcb = {}\n", 4, "snp.min_tcb", "empty table"),
        (HEAD + "any_of = []\n", 3, "any_of", "empty list of alternatives"),
        # unknown names
        (HEAD + "[snp]\nproducts = ['Milano']\n", 4, "snp.products[0]", "did you mean 'Milan'?"),
        ('version = 1\nplatforms = ["snp", "nil"]\n', 2, "platforms[1]", "unknown value 'nil'"),
        (HEAD + "[tdx]\ntcb_status = ['UpToDte']\n", 4, "tdx.tcb_status[0]", "did you mean 'UpToDate'?"),
        (
            HEAD + "[tdx]\ndeny_advisories = ['SA-00960']\n",
            4,
            "tdx.deny_advisories[0]",
            "not an Intel advisory ID",
        ),
        (HEAD + "[snp]\nsigners = ['VCEKS']\n", 4, "snp.signers[0]", "unknown value"),
        # rules for a platform that is not allowed
        (
            'version = 1\nplatforms = ["snp"]\n\n[sim]\nmin_tcb.microcode = 1\n',
            4,
            "sim",
            "which `platforms` does not allow",
        ),
        (
            'version = 1\nplatforms = ["snp"]\nany_of = [{ tdx = { tcb_status = ["UpToDate"] } }]\n',
            3,
            "any_of[0].tdx",
            "does not allow",
        ),
    ],
)
def test_malformed_policy_names_file_line_and_key(text: str, line: int, key: str, problem: str) -> None:
    err = error(text)
    assert (err.file, err.line, err.key) == ("deploy.toml", line, key)
    assert problem in err.problem
    assert str(err).startswith(f"deploy.toml:{line}: {key}: ")


def test_missing_required_keys() -> None:
    err = error('platforms = ["snp"]\n')
    assert (err.key, err.line) == ("version", None)
    assert str(err) == "deploy.toml: version: required key missing (write version = 1)"
    err = error("version = 1\n")
    assert err.key == "platforms" and "required key missing" in str(err)


def test_toml_syntax_errors_name_the_line() -> None:
    err = error('version = 1\nplatforms = ["snp"\nname = "x"\n')
    assert err.line is not None and "not valid TOML" in str(err)
    err = error('version = 1\nplatforms = ["snp"]\n[snp\n')
    assert err.line == 3


def test_load_policy_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "deploy.toml"
    path.write_text(HEAD + "\n[snp]\nproducts = ['milan', 'GENOA']   # names ignore case\n")
    policy = load_policy(path)
    assert policy.name == "deploy" and policy.source == str(path)
    assert policy.platforms == ("snp", "tdx", "sgx")
    section = policy.rules[3]
    assert isinstance(section, OnPlatform) and section.rules[0].products == ("Milan", "Genoa")  # type: ignore[attr-defined]
    path.write_text(HEAD + "\n\n[snp]\nproducts = []\n")
    with pytest.raises(PolicyError, match=rf"^{path}:6: snp.products: empty allow list"):
        load_policy(path)
    with pytest.raises(PolicyError, match="cannot read the policy file"):
        load_policy(tmp_path / "missing.toml")
    path.write_bytes(b"version = 1\n\xff\n")
    with pytest.raises(PolicyError, match="not UTF-8"):
        load_policy(path)


def test_compiled_rules_keep_file_order_and_normalise_values() -> None:
    policy = loads_policy(
        HEAD
        + "max_age = '1h30m'\n"
        + f"measurements = ['0x{'AB' * 48}', '{'ab' * 48}']\n"
        + "tdx.fmspc = ['00806F050000']\n"
        + "any_of = [{ platforms = ['snp'] }, { platforms = ['tdx'] }]\n"
        + "not = { sgx = { tcb_status = ['revoked'] } }\n",
        "p.toml",
    )
    kinds = [type(r).__name__ for r in policy.rules]
    assert kinds == [
        "PlatformIn",
        "Debug",
        "MigrationAgent",
        "MaxAge",
        "BytesIn",
        "OnPlatform",
        "AnyOf",
        "Not",
    ]
    age, measurements, tdx, any_of, negation = policy.rules[3:]
    assert isinstance(age, MaxAge) and age.seconds == 5400
    assert isinstance(measurements, BytesIn) and measurements.values == (bytes.fromhex("ab" * 48),)
    assert isinstance(tdx, OnPlatform) and tdx.rules[0].values == ("00806f050000",)  # type: ignore[attr-defined]
    assert isinstance(any_of, AnyOf) and [a.rule for a in any_of.alternatives] == ["any_of[0]", "any_of[1]"]
    assert isinstance(negation, Not) and negation.rule == "not"
    assert policy.pins_measurement
    assert isinstance(policy.rules[0], PlatformIn)


def test_same_text_same_policy() -> None:
    text = HEAD + "[snp]\nproducts = ['Milan']\n"
    a, b = loads_policy(text, "a.toml"), loads_policy(text, "a.toml")
    assert a == b and a.digest == b.digest and a.policy_id == b.policy_id
    assert loads_policy(text + "# changed\n", "a.toml").digest != a.digest


# --- the line locator --------------------------------------------------------------


def test_key_lines_understands_toml_structure() -> None:
    text = """# comment [not.a.table]
version = 1
"quoted key" = 'x'
a.b . c = 1
description = \"\"\"
[fake] = 2
\"\"\"
lit = '''
x = 1 '''
[snp]
min_tcb = { bootloader = 4, "tee" = 0 }
arr = [
  1,  # one
  { k = "v,]}" },
]
when = 1979-05-27 07:32:00Z
after = 2
[[any_of]]
x = 1
[[any_of]]
[any_of.tdx]
y = 2
[[any_of.z]]
w = 3
"""
    lines = key_lines(text)
    assert lines[("version",)] == 2
    assert lines[("quoted key",)] == 3
    assert lines[("a", "b", "c")] == 4
    assert lines[("lit",)] == 8
    assert ("fake",) not in lines and ("x",) not in lines
    assert lines[("snp",)] == 10
    assert lines[("snp", "min_tcb", "tee")] == 11
    assert lines[("snp", "arr", 0)] == 13
    assert lines[("snp", "arr", 1, "k")] == 14
    assert lines[("snp", "after")] == 17
    assert lines[("any_of", 0, "x")] == 19
    assert lines[("any_of", 1, "tdx", "y")] == 22
    assert lines[("any_of", 1, "z", 0, "w")] == 24
    assert line_of(lines, ("snp", "min_tcb", "tee", "deeper")) == 11
    assert line_of(lines, ("nowhere",)) is None
    assert dotted(("any_of", 1, "snp", "quoted key")) == 'any_of[1].snp."quoted key"'


def test_key_lines_survives_surprises() -> None:
    assert key_lines("a = [1,\n") == {("a",): 1, ("a", 0): 1}
    assert key_lines("= 1") == {}
