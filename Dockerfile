# One image for the worker and the API (`python -m api`).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY core core
COPY workflows workflows
COPY activities activities
COPY api api
COPY db db
COPY worker.py starter.py devstack.py ./
RUN pip install --no-cache-dir .
CMD ["python", "worker.py"]
