# The converge operator image. Built with no registry and no network:
#   .ci/build-image [TAG]     (imports the base, makes the wheels, docker build --network none)
# BASE_IMAGE: Debian bookworm minbase with python3 + python3-venv, made by
# .ci/setup.d/image.sh (debootstrap) and `docker import`ed by .ci/build-image.
# build/wheels/: the wheels of requirements-operator.txt (pinned, hash-checked) and of
# converge itself, made on the host with `pip wheel` (same Python minor version, 3.11).
ARG BASE_IMAGE=converge/bookworm-python:local

FROM ${BASE_IMAGE} AS build
COPY requirements-operator.txt /src/requirements-operator.txt
COPY build/wheels/ /src/wheels/
RUN python3 -m venv /opt/converge \
 && /opt/converge/bin/pip install --quiet --no-index --no-cache-dir --disable-pip-version-check \
      --find-links /src/wheels --require-hashes --only-binary :all: -r /src/requirements-operator.txt \
 && /opt/converge/bin/pip install --quiet --no-index --no-cache-dir --disable-pip-version-check \
      --no-deps /src/wheels/converge-*.whl \
 && /opt/converge/bin/pip check \
 && /opt/converge/bin/python -m pip uninstall --quiet --yes pip setuptools

FROM ${BASE_IMAGE}
RUN echo "converge:x:65532:65532:converge operator:/nonexistent:/usr/sbin/nologin" >> /etc/passwd \
 && echo "converge:x:65532:" >> /etc/group \
 && mkdir -p /var/lib/converge && chown 65532:65532 /var/lib/converge && chmod 0700 /var/lib/converge
COPY --from=build /opt/converge /opt/converge
ENV PATH=/opt/converge/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 65532:65532
WORKDIR /var/lib/converge
EXPOSE 8080 9090
ENTRYPOINT ["converge", "operator"]
CMD []
