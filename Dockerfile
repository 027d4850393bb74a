# The same environment as our machines: CPU by default; on a GPU host use a CUDA base image and
# the matching torch wheel (the rest is identical).
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 TCKR_PROJECT=/data/workspace
WORKDIR /app

COPY requirements.txt requirements-dev.txt ./
RUN pip install -r requirements.txt

COPY pipeline ./pipeline
COPY studio ./studio
COPY assets ./assets
COPY pyproject.toml README.md ./
RUN pip install --no-deps -e .

VOLUME /data
EXPOSE 8501
CMD ["python", "-m", "pipeline", "caption", "--project", "/data/workspace"]
