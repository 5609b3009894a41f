# Sourced by the GPU checks (gpu_first_contact.sh, gpu_spread_check.sh), from the repository root: on a machine that
# cannot install packages, install the wheels put in .whl/ (../shared/gpu/README.md) into /tmp/site and use them.
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 2
  export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
  # Tests start `python -m fastwavenet` and `python -c` in the repository root, where the source folder comes first
  # on sys.path and has no kernels/ (setup.py maps it): link it for this run, as the installed package has it.
  if [ ! -e fastwavenet/kernels ]; then
    ln -s ../kernels fastwavenet/kernels && trap 'rm -f fastwavenet/kernels' EXIT
  fi
fi
