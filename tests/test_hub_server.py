"""The fake Hub (tests/support/hub_server.py) against the real huggingface_hub / transformers / diffusers clients."""

import hashlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

ALICE, BOB = "token-alice", "token-bob"


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "to_upload"
    (root / "weights").mkdir(parents=True)
    (root / "notes.txt").write_text("first version\n")
    (root / "weights" / "blob.bin").write_bytes(os.urandom(1_500_000))  # > 1 MB => LFS upload path
    return root


def _read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_endpoint_is_patched_and_loopback_only(hub_server):
    import huggingface_hub.constants as C
    from huggingface_hub.file_download import hf_hub_url

    assert hub_server.endpoint.startswith("http://127.0.0.1:")
    assert C.ENDPOINT == os.environ["HF_ENDPOINT"] == hub_server.endpoint
    assert C.HF_HUB_DISABLE_XET and os.environ["HF_HUB_DISABLE_XET"] == "1"
    assert HfApi().endpoint == hub_server.endpoint
    assert hf_hub_url("alice/x", "a.txt").startswith(hub_server.endpoint + "/alice/x/resolve/main/")
    with pytest.raises(RuntimeError, match="outside of loopback"):  # refused before any network access
        HfApi(endpoint="https://huggingface.co").model_info("openai-community/gpt2")


def test_create_repo_and_whoami(hub_server, tmp_path):
    api = HfApi()
    assert api.whoami(token=ALICE)["name"] == "alice"
    url = api.create_repo("alice/tiny", token=ALICE)
    assert url.repo_id == "alice/tiny" and url.endpoint == hub_server.endpoint
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("alice/tiny", token=ALICE)
    assert err.value.response.status_code == 409
    assert api.create_repo("alice/tiny", token=ALICE, exist_ok=True).repo_id == "alice/tiny"
    assert api.create_repo("data", repo_type="dataset", token=BOB).repo_id == "bob/data"  # namespace from token
    assert api.repo_exists("bob/data", repo_type="dataset") and not api.repo_exists("bob/data")
    api.upload_file(path_or_fileobj=b"PAR1", path_in_repo="train.parquet", repo_id="bob/data", repo_type="dataset", token=BOB)
    info = api.dataset_info("bob/data", files_metadata=True)
    assert [s.lfs is not None for s in info.siblings] == [False, True]  # *.parquet always goes through LFS
    path = hf_hub_download("bob/data", "train.parquet", repo_type="dataset", cache_dir=tmp_path / "cache")
    assert _read(path) == b"PAR1"
    info = api.model_info("alice/tiny")
    assert len(info.sha) == 40 and [s.rfilename for s in info.siblings] == [".gitattributes"]
    assert ("POST", "/api/repos/create") in hub_server.requests


def test_upload_folder_then_download_into_empty_cache(hub_server, folder, tmp_path):
    api = HfApi(token=ALICE)
    api.create_repo("alice/files")
    commit = api.upload_folder(folder_path=folder, repo_id="alice/files", commit_message="add files")
    assert len(commit.oid) == 40
    assert [c.title for c in api.list_repo_commits("alice/files")] == ["add files", "initial commit"]
    # The big binary went through git-LFS (batch + PUT + verify), the text file inline in the commit.
    methods = [m for m, path in hub_server.requests if "/__lfs__/" in path or path.endswith("/objects/batch")]
    assert methods == ["POST", "PUT"]
    siblings = {s.rfilename: s for s in api.model_info("alice/files", files_metadata=True).siblings}
    assert siblings["weights/blob.bin"].lfs is not None and siblings["notes.txt"].lfs is None
    assert siblings["weights/blob.bin"].lfs.sha256 == hashlib.sha256(_read(folder / "weights/blob.bin")).hexdigest()

    snapshot = snapshot_download("alice/files", cache_dir=tmp_path / "cache1", token=False)
    for rel in ("notes.txt", "weights/blob.bin"):
        assert _read(os.path.join(snapshot, rel)) == _read(folder / rel)
    assert os.path.basename(snapshot) == commit.oid
    path = hf_hub_download("alice/files", "weights/blob.bin", cache_dir=tmp_path / "cache2")
    assert _read(path) == _read(folder / "weights/blob.bin")
    tree = {f.path for f in api.list_repo_tree("alice/files", recursive=True)}
    assert tree == {".gitattributes", "notes.txt", "weights", "weights/blob.bin"}
    assert any(m == "GET" and "/resolve/" in p for m, p in hub_server.requests)


def test_new_commit_keeps_old_revision(hub_server, folder, tmp_path):
    api = HfApi(token=ALICE)
    api.create_repo("alice/history")
    first = api.upload_folder(folder_path=folder, repo_id="alice/history").oid
    second = api.upload_file(path_or_fileobj=b"second version\n", path_in_repo="notes.txt", repo_id="alice/history").oid
    assert first != second and api.model_info("alice/history").sha == second

    cache = tmp_path / "cache"
    assert _read(hf_hub_download("alice/history", "notes.txt", cache_dir=cache)) == b"second version\n"
    assert _read(hf_hub_download("alice/history", "notes.txt", revision=first, cache_dir=cache)) == b"first version\n"
    assert _read(hf_hub_download("alice/history", "notes.txt", revision=first[:10], cache_dir=tmp_path / "c2")) == b"first version\n"

    api.delete_file("weights/blob.bin", repo_id="alice/history")
    assert not api.file_exists("alice/history", "weights/blob.bin")
    assert api.file_exists("alice/history", "weights/blob.bin", revision=second)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("alice/history", "notes.txt", revision="f" * 40, cache_dir=tmp_path / "c3")
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("alice/history", "missing.txt", cache_dir=tmp_path / "c4")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("alice/nope", "notes.txt", cache_dir=tmp_path / "c5")


def test_private_repo_needs_the_right_token(hub_server, tmp_path):
    api = HfApi()
    api.create_repo("alice/secret", private=True, token=ALICE)
    api.upload_file(path_or_fileobj=b"top secret", path_in_repo="s.txt", repo_id="alice/secret", token=ALICE)

    for i, token in enumerate([None, False, BOB]):  # no token (none stored either) / explicitly none / no access
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download("alice/secret", "s.txt", token=token, cache_dir=tmp_path / f"c{i}")
        with pytest.raises(RepositoryNotFoundError):
            api.model_info("alice/secret", token=token)
    with pytest.raises(HfHubHTTPError) as err:  # unknown token: 401, like the real Hub
        hf_hub_download("alice/secret", "s.txt", token="token-wrong", cache_dir=tmp_path / "c3")
    assert err.value.response.status_code == 401
    assert _read(hf_hub_download("alice/secret", "s.txt", token=ALICE, cache_dir=tmp_path / "ok")) == b"top secret"
    assert api.model_info("alice/secret", token=ALICE).private is True


def test_writes_need_a_token_with_rights_on_the_namespace(hub_server):
    api = HfApi()
    api.create_repo("alice/mine", token=ALICE)
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("alice/other")  # no token at all
    assert err.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("alice/other", token=BOB)
    assert err.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as err:
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="alice/mine")
    assert err.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as err:
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="alice/mine", token=BOB)
    assert err.value.response.status_code == 403
    assert [s.rfilename for s in api.model_info("alice/mine").siblings] == [".gitattributes"]


def test_lfs_upload_is_checked_against_sha256(hub_server):
    HfApi().create_repo("alice/lfs", token=ALICE)
    oid, size = "ab" * 32, 4

    def call(method, url, body, headers):
        req = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    batch = {"operation": "upload", "transfers": ["basic"], "objects": [{"oid": oid, "size": size}], "hash_algo": "sha256"}
    status, body = call("POST", f"{hub_server.endpoint}/alice/lfs.git/info/lfs/objects/batch", json.dumps(batch).encode(),
                        {"Authorization": f"Bearer {ALICE}", "Content-Type": "application/json"})
    assert status == 200
    href = json.loads(body)["objects"][0]["actions"]["upload"]["href"]
    assert href.startswith(hub_server.endpoint)
    assert call("PUT", href, b"nope", {})[0] == 400  # right size, wrong sha256


def test_env_for_subprocess(hub_server, tmp_path):
    api = HfApi(token=ALICE)
    api.create_repo("alice/sub")
    api.upload_file(path_or_fileobj=b"from parent", path_in_repo="msg.txt", repo_id="alice/sub")
    code = (
        "import huggingface_hub as h, huggingface_hub.constants as c;"
        "assert c.ENDPOINT.startswith('http://127.0.0.1:'), c.ENDPOINT;"
        "print(open(h.hf_hub_download('alice/sub', 'msg.txt'), 'rb').read().decode(), end='')"
    )
    env = {**os.environ, **hub_server.env(hf_home=tmp_path / "child_home")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "from parent"
    assert (tmp_path / "child_home" / "hub").is_dir()


def test_transformers_push_to_hub_and_from_pretrained(hub_server, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=37, vocab_size=99)
    torch.manual_seed(0)
    model = transformers.BertModel(config)
    model.push_to_hub("alice/tiny-bert", token=ALICE)

    files = {s.rfilename for s in HfApi().model_info("alice/tiny-bert").siblings}
    assert {"config.json", "model.safetensors"} <= files
    loaded = transformers.AutoModel.from_pretrained("alice/tiny-bert", cache_dir=tmp_path / "empty_cache")
    assert type(loaded) is transformers.BertModel
    expected, got = model.state_dict(), loaded.state_dict()
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        assert torch.equal(tensor, got[name]), name
    sha = HfApi().model_info("alice/tiny-bert").sha  # transformers resolves "main" first, then downloads by sha
    assert ("GET", f"/alice/tiny-bert/resolve/{sha}/model.safetensors") in hub_server.requests


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks` argument is deprecated")  # diffusers
def test_diffusers_push_to_hub_and_from_pretrained(hub_server, tmp_path):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=2, sample_size=8)
    vae.push_to_hub("alice/tiny-vae", token=ALICE)

    loaded = diffusers.AutoencoderKL.from_pretrained("alice/tiny-vae", cache_dir=tmp_path / "empty_cache")
    for name, tensor in vae.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
