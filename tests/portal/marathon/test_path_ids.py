import pytest

from portal.marathon.path_ids import InvalidPathId, canonical_group_id, canonical_path_id


@pytest.mark.parametrize(
    ("raw_id", "base_group", "expected"),
    [
        ("/web", "/", "/web"),
        ("web", "/", "/web"),
        ("web", "/shop", "/shop/web"),
        ("web/", "/shop/", "/shop/web"),
        ("//shop//web/", "/", "/shop/web"),
        ("/abs/web", "/shop", "/abs/web"),
        ("../web", "/shop/eu", "/shop/web"),
        ("./web", "/shop", "/shop/web"),
        ("a.b-c/x1", "/", "/a.b-c/x1"),
    ],
)
def test_ids_are_canonical_and_absolute(raw_id, base_group, expected):
    assert canonical_path_id(raw_id, base_group) == expected


@pytest.mark.parametrize(
    ("raw_id", "message_part"),
    [
        ("/", "root group"),
        ("", "root group"),
        ("/Web", "segment 'Web'"),
        ("/-web", "segment '-web'"),
        ("/web-", "segment 'web-'"),
        ("/we_b", "segment 'we_b'"),
        ("/a..b", "segment 'a..b'"),
        ("/.web", "segment '.web'"),
        ("../web", "climbs above the root group"),
        ("/web/..", "resolves to the root group"),
    ],
)
def test_invalid_ids_are_refused_with_a_reason(raw_id, message_part):
    with pytest.raises(InvalidPathId) as refused:
        canonical_path_id(raw_id)
    assert message_part in str(refused.value)


def test_group_ids_canonicalise_and_keep_the_root():
    assert canonical_group_id("") == "/"
    assert canonical_group_id("//shop/") == "/shop"
