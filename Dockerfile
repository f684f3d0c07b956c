# One image for the worker (default command) and the API (`python -m api`).
FROM python:3.11-slim
# git: every build's workspace is a git repository.
RUN apt-get update && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY core core
COPY workflows workflows
COPY activities activities
COPY api api
COPY db db
COPY client client
COPY cli cli
COPY serving serving
COPY devtools devtools
COPY worker.py starter.py devstack.py ./
# Byte-compiled here, as root: the worker cannot write /app, and without .pyc files the workflow
# sandbox compiles the workflow's source again for every build it starts.
RUN pip install --no-cache-dir . \
    && python -m compileall -q core workflows activities api db client serving cli devtools worker.py \
    && useradd --create-home --uid 10001 qao \
    && mkdir -p /data && chown qao /data
USER qao
ENV DATA_DIR=/data
CMD ["python", "worker.py"]
