"""Claims of the shared vectors, for the policy tests.

SNP: verified from the real reports in tests/data/vectors/snp with AMD's
roots shipped in the package (verify_report, at VERIFY_AT).

TDX and SGX: Intel quote verification does not exist yet, so these claims
are built with stockade.testing.claims.make_claims from the values the
vector collector recorded in each vector's expected.json
(../shared/vectors/{tdx,sgx}/*/expected.json: pck_extensions.fmspc,
collateral.results.overall_expected_status and tcb_eval.advisoryIDs,
decoded.td_attributes.debug / sgx_attributes_flags.debug, body.mr_td /
rtmr0 / mr_seam / mr_enclave / mr_signer, decoded.td_attributes). Vectors whose TCB evaluation
fails (no matching TCB level) produce no claims and are left out.

``vector_claims("snp/milan-v3-oak")`` returns the claims of one vector;
``"sim/local"`` names hand-made sim claims (the sim chip's TCB).
"""

from __future__ import annotations

import functools
from typing import Any

from snp_support import VERIFY_AT, sample
from stockade.evidence.claims import VerifiedClaims
from stockade.evidence.snp.verify import amd_anchors, verify_report
from stockade.testing.claims import make_claims

SNP_VECTORS = (
    "genoa-v3-azure-trustee",
    "milan-v2-go-sev-guest",
    "milan-v2-idblock-trustee",
    "milan-v3-azure-trustee",
    "milan-v3-oak",
    "milan-v3-vlek-aws-trustee",
    "turin-v5-oak",
)

# name: (fmspc, tcb_status, advisories, debug, mrtd, rtmr0, mrseam)
TDX_VECTORS: dict[str, tuple[str, str, tuple[str, ...], bool, str, str, str]] = {
    "v4-00a06d08-trustee": (
        "00a06d080000",
        "OutOfDate",
        (),
        False,
        "21e8dead92d6c69d7cbba79816686c03a48485c7df0c11f6f04792d5e1d378f6b8c46615ba6946adccac6becffbb1e88",
        "395aefe7bac15b24c40f1cd7ba6f8fa48732be5c56c61485ed3cd9c8b16cce8ece64c331b99ce36d96605135c753aaa2",
        "476a2997c62bccc78370913d0a80b956e3721b24272bc66c4d6307ced4be2865c40e26afac75f12df3425b03eb59ea7c",
    ),
    "v4-50806f-trustee": (
        "50806f000000",
        "UpToDate",
        (),
        True,
        "705ee9381b8633a9fbe532b52345e8433343d2868959f57889d84ca377c395b689cac1599ccea1b7d420483a9ce5f031",
        "e940da7c2712d2790e2961e00484f4fa8e6f9eed71361655ae22699476b14f9e63867eb41edd4b480fef0c59f496b288",
        "2fd279c16164a93dd5bf373d834328d46008c2b693af9ebb865b08b2ced320c9a89b4869a9fab60fbe9d0c5a5363c656",
    ),
    "v4-azure-trustee": (
        "00806f050000",
        "OutOfDate",
        ("INTEL-SA-00960", "INTEL-SA-00982", "INTEL-SA-00986"),
        False,
        "024a32b070383331181619fa387cb4d55d1e38879f989933055ccad5bc2db795d1737b66205949d15469dc8c1ba7ab7b",
        "0" * 96,
        "360304d34a16aace0a18e09ad2d07d2b9fd3c174378e5bf108388079827f89ff62acc5f8c473dd40706324834e202946",
    ),
    "v4-b0c06f-dcap-qvl": (
        "b0c06f000000",
        "UpToDate",
        (),
        False,
        "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7",
        "44c0197b39157fdd7a4dcc44767f9d6b0bb3977c7a8e347b8492f827fe9d9e5c48aca29b220b80b6a540cf994b9bc9c0",
        "5b38e33a6487958b72c3c12a938eaa5e3fd4510c51aeeab58c7d5ecee41d7c436489d6c8e4f92f160b7cad34207b00c1",
    ),
    "v4-gcp-cos-go-tdx-guest": (
        "00806f050000",
        "UpToDate",
        (),
        False,
        "dae67181d3d65e073ad8f95b7907d5e927bfe9761c9ff3e9b89734a45d8954dba41394c7717cb2735396c1d04231f94a",
        "3fa2f61f395b7f5feefb4ec2df61297f109ad8abcd6410c1b7df60f21f37b19297fc35e544039c7e1edece752afd17f6",
        "ffc97a88587660fb04e1f7c851300c96ae0b5a463ac46d035d16c2d9f36d0ed1d23775bcbd27deb219e3a3cc28023895",
    ),
    "v5-90c06f-go-tdx-guest": (
        "90c06f000000",
        "UpToDate",
        (),
        False,
        "7348651a34b2d2d3462822e3a750ec6110125f36757c78480bbfc69cc0d21fb001a1ced3ee19747dda8f750c3bc8f876",
        "5c8daf76063a71ac8fcef4067564661fc682ed7944c7a5d21dbbced02f61ceff4ba0678c6aef3bdae8cbc614cec24619",
        "7bf063280e94fb051f5dd7b1fc59ce9aac42bb961df8d44b709c9b0ff87a7b4df648657ba6d1189589feab1d5a3c9a9d",
    ),
}

# decoded.td_attributes.sept_ve_disable
TDX_SEPT_VE_DISABLE = {
    "v4-00a06d08-trustee": True,
    "v4-50806f-trustee": True,
    "v4-azure-trustee": False,
    "v4-b0c06f-dcap-qvl": True,
    "v4-gcp-cos-go-tdx-guest": True,
    "v5-90c06f-go-tdx-guest": True,
}

# name: (fmspc, tcb_status or None, advisories, debug, mrenclave, mrsigner)
SGX_VECTORS: dict[str, tuple[str, str | None, tuple[str, ...], bool, str, str]] = {
    "v3-00a067-dcap-qvl": (
        "00a067110000",
        "ConfigurationAndSWHardeningNeeded",
        ("INTEL-SA-00289", "INTEL-SA-00615"),
        False,
        "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb",
        "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6",
    ),
    "v3-00606a-occlum-trustee": (
        "00606a000000",
        None,  # no collateral was found for this FMSPC: no TCB status
        (),
        True,
        "8f173e4613ff05c52aaf04162d234edae8c9977eae47eb2299ae16a553011c68",
        "83d719e77deaca1470f6baf62a4d774303c899db69020f9c70ee1dfc08c7ce9e",
    ),
}


@functools.cache
def snp_claims(name: str) -> VerifiedClaims:
    s = sample(name)
    return verify_report(s.report, s.vcek_der, s.ask_der, amd_anchors(), VERIFY_AT).claims


def tdx_claims(name: str) -> VerifiedClaims:
    fmspc, status, advisories, debug, mrtd, rtmr0, mrseam = TDX_VECTORS[name]
    registers: dict[str, Any] = {
        "mrtd": bytes.fromhex(mrtd),
        "rtmr0": bytes.fromhex(rtmr0),
        "mrseam": bytes.fromhex(mrseam),
    }
    return make_claims(
        platform="tdx",
        fmspc=fmspc,
        tcb_status=status,
        advisory_ids=advisories,
        debug=debug,
        policy_flags={"sept_ve_disable": TDX_SEPT_VE_DISABLE[name]},
        measurement=registers["mrtd"],
        registers=registers,
        verified_at=VERIFY_AT,
    )


def sgx_claims(name: str) -> VerifiedClaims:
    fmspc, status, advisories, debug, mrenclave, mrsigner = SGX_VECTORS[name]
    return make_claims(
        platform="sgx",
        fmspc=fmspc,
        tcb_status=status,
        advisory_ids=advisories,
        debug=debug,
        measurement=bytes.fromhex(mrenclave),
        registers={"mrenclave": bytes.fromhex(mrenclave), "mrsigner": bytes.fromhex(mrsigner)},
        verified_at=VERIFY_AT,
    )


def vector_claims(name: str) -> VerifiedClaims:
    kind, _, vector = name.partition("/")
    if kind == "snp":
        return snp_claims(vector)
    if kind == "tdx":
        return tdx_claims(vector)
    if kind == "sgx":
        return sgx_claims(vector)
    if name == "sim/local":
        return make_claims(platform="sim", verified_at=VERIFY_AT)
    raise KeyError(name)


ALL_VECTORS = (
    *(f"snp/{n}" for n in SNP_VECTORS),
    *(f"tdx/{n}" for n in TDX_VECTORS),
    *(f"sgx/{n}" for n in SGX_VECTORS),
    "sim/local",
)
