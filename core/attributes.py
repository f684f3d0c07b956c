"""The search attributes a build keeps current, for the Web UI's filters and `temporal workflow
list --query`. The embedded dev server and compose's namespace set-up register them."""

from __future__ import annotations

from typing import Any

from temporalio.common import (
    SearchAttributeIndexedValueType,
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
)

BUILD_STATE = SearchAttributeKey.for_keyword("BuildState")
BUILD_ROLE = SearchAttributeKey.for_keyword("BuildRole")
PROJECT_ID = SearchAttributeKey.for_keyword("ProjectId")
TOKENS = SearchAttributeKey.for_int("BuildTokens")
COST = SearchAttributeKey.for_float("BuildCostUsd")
TEST_ATTEMPTS = SearchAttributeKey.for_int("TestAttempts")
VERIFICATION_ATTEMPTS = SearchAttributeKey.for_int("VerificationAttempts")


def of_project(project_id: str) -> TypedSearchAttributes:
    """What a workflow of a project starts with (a build, a suite run): its ProjectId."""
    return TypedSearchAttributes([SearchAttributePair(PROJECT_ID, project_id)])


KEYS: tuple[SearchAttributeKey[Any], ...] = (
    BUILD_STATE,
    BUILD_ROLE,
    PROJECT_ID,
    TOKENS,
    COST,
    TEST_ATTEMPTS,
    VERIFICATION_ATTEMPTS,
)

# The kind names the temporal CLI (`--search-attribute Name=Kind`) and the operator API take.
KIND_NAMES = {
    SearchAttributeIndexedValueType.KEYWORD: "Keyword",
    SearchAttributeIndexedValueType.INT: "Int",
    SearchAttributeIndexedValueType.DOUBLE: "Double",
    SearchAttributeIndexedValueType.BOOL: "Bool",
    SearchAttributeIndexedValueType.DATETIME: "Datetime",
}
SEARCH_ATTRIBUTES: dict[str, str] = {key.name: KIND_NAMES[key.indexed_value_type] for key in KEYS}
# SQL visibility (the dev server, PostgreSQL) allows at most this many custom ones per kind.
SEARCH_ATTRIBUTE_LIMITS = {"Keyword": 10, "Int": 3, "Double": 3, "Bool": 3, "Datetime": 3}
