# Sourced by the device scripts: puts the Python packages a lent machine lacks on PYTHONPATH, after the
# checkout: the packed site (carry .devsite; tools/device/pack_site.sh), else the wheels (carry .whl).
# Where neither travelled the installed environment is used as it is.
_site=""
if [ -f .devsite/site312.tar.xz ]; then
  tar -xJf .devsite/site312.tar.xz -C /tmp && _site=/tmp/site312 || return 1
elif compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && _site=/tmp/site || return 1
fi
export PYTHONPATH="$PWD${_site:+:$_site}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
