#!/bin/sh
# One-shot: the namespace and the search attributes the build workflow upserts.
# Safe to run again: an existing namespace is kept, and registering an attribute that exists with
# the same type is a no-op (a different type is an error, and stops the stack from starting).
set -eu
: "${TEMPORAL_ADDRESS:?}" "${TEMPORAL_NAMESPACE:?}" "${SEARCH_ATTRIBUTES:?}"
RETENTION="${NAMESPACE_RETENTION:-72h}"
T="${TEMPORAL_CLI:-temporal}"

until "$T" operator cluster health --address "$TEMPORAL_ADDRESS" >/dev/null 2>&1; do
  echo "waiting for Temporal at $TEMPORAL_ADDRESS"
  sleep 2
done
if ! "$T" operator namespace describe -n "$TEMPORAL_NAMESPACE" --address "$TEMPORAL_ADDRESS" >/dev/null 2>&1; then
  "$T" operator namespace create -n "$TEMPORAL_NAMESPACE" --retention "$RETENTION" --address "$TEMPORAL_ADDRESS"
fi
set --
for pair in $SEARCH_ATTRIBUTES; do
  set -- "$@" --name "${pair%%=*}" --type "${pair#*=}"
done
# A new namespace reaches the server's namespace cache within seconds: retry until it has.
tries=0
until "$T" operator search-attribute create --namespace "$TEMPORAL_NAMESPACE" --address "$TEMPORAL_ADDRESS" "$@"; do
  tries=$((tries + 1))
  if [ "$tries" -ge 30 ]; then
    echo "could not register the search attributes" >&2
    exit 1
  fi
  sleep 1
done
echo "namespace $TEMPORAL_NAMESPACE ready with search attributes: $SEARCH_ATTRIBUTES"
