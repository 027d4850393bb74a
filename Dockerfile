# The same environment as our machines: CPU by default; on a GPU host use a CUDA base image and
# the matching torch wheel (the rest is identical).
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 TCKR_PROJECT=/data/workspace
WORKDIR /app

# Chromium: kaleido renders the studio's PNG exports with it
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium && rm -rf /var/lib/apt/lists/*

COPY requirements.txt requirements-dev.txt ./
# e.g. --build-arg PIP_EXTRA_ARGS="--extra-index-url <a CPU-only torch index>" for a smaller CPU image
ARG PIP_EXTRA_ARGS=""
RUN pip install $PIP_EXTRA_ARGS -r requirements.txt

COPY pipeline ./pipeline
COPY studio ./studio
COPY assets ./assets
COPY pyproject.toml README.md ./
RUN pip install --no-deps -e .

VOLUME /data
EXPOSE 8501
# The studio binds to localhost unless told otherwise; in a container it must listen on all
# interfaces so that `docker run -p 8501:8501 ...` can reach it.
CMD ["python", "-m", "pipeline", "quickstart", "--studio", "--host", "0.0.0.0", "--port", "8501"]
