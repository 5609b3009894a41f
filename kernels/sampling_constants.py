"""The numbers of the sampling rule, written once for every implementation of it: the torch reference
(fastwavenet/distributions.py), the numba kernel (kernels/cpu.py) and the Triton kernel (kernels/gpu.py). Plain
Python values, so that each reads them into its own arithmetic (numba and Triton fold them into the compiled code).

The kernels' compile caches key on the kernels' own source, not on this file: after changing a number here, clear
numba's cache (the folder `fastwavenet doctor` names) and Triton's (~/.triton/cache), or the kernels keep the old one.
"""

# The output distributions: the `distribution` argument of kernels/cpu.py, the DIST constant of kernels/gpu.py;
# KERNEL_CODES by each output's name in WaveNetConfig.output.
SOFTMAX, LOGISTIC_MIXTURE, GAUSSIAN = 0, 1, 2
KERNEL_CODES = {"softmax": SOFTMAX, "logistic_mixture": LOGISTIC_MIXTURE, "gaussian": GAUSSIAN}

# A continuous draw's uniform is kept this far from 0 and 1 (r9y9's bound), so that a draw is never infinite.
U_EDGE = 1e-5

# Acklam's rational approximation of the standard normal quantile (relative error below 1.2e-9), in float64: the
# centre, |v - 0.5| <= 0.5 - NORMAL_LOW, is q * A(q^2) / B(q^2) with q = v - 0.5; the tails are C(s) / D(s) with
# s = sqrt(-2 log(min(v, 1 - v))), negated for the upper one. Coefficients from the highest power down; B and D
# end in a constant term of 1, not listed.
NORMAL_A = (-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02, 1.383577518672690e+02,
            -3.066479806614716e+01, 2.506628277459239e+00)
NORMAL_B = (-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02, 6.680131188771972e+01,
            -1.328068155288572e+01)
NORMAL_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00, -2.549732539343734e+00,
            4.374664141464968e+00, 2.938163982698783e+00)
NORMAL_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00)
NORMAL_LOW = 0.02425
