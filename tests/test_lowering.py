"""The CPU lowering transform: outputs and gradients equal to native, fallbacks, bodies."""

import os
import re
from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from saliency_jax import lowering
from saliency_jax.lowering import cpu_lowering, is_lowered

# float32: the fast forms sum the same products in another order (a matmul instead of a direct
# convolution), so values agree to a few ulps of the largest term; a wrong tap or a dropped
# window would be off by O(1).
TOL = dict(rtol=1e-4, atol=1e-4)


def _primitives(f, *args) -> set:
  """Every primitive name in the jaxpr of `f`, bodies included."""
  names = set()

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      names.add(eqn.primitive.name)
      for value in eqn.params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
          inner = getattr(item, "jaxpr", item)
          if hasattr(inner, "eqns"):
            walk(inner)

  walk(jax.make_jaxpr(f)(*args).jaxpr)
  return names


FORWARD_STYLE = "[b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, f]"


def _cpu_program(f, *args) -> str:
  """The CPU program of `f` (StableHLO): the platform's branch only, as it will be compiled."""
  return jax.jit(f).lower(*args).as_text()


def _conv_layouts(program: str) -> list[str]:
  """Each convolution's dimension numbers and dilation: autodiff's input gradient is
  [0, 1, o, i] (or lhs-dilated when strided), its weight gradient has the batch as a feature."""
  return [m.group(1) + ("" if m.group(2) == "[1, 1]" else " lhs_dilate " + m.group(2))
          for m in re.finditer(r"stablehlo.convolution.*?dim_numbers = (\[[^\]]*\]x\[[^\]]*\]->\[[^\]]*\]).*?"
                               r"lhs_dilate = (\[[^\]]*\])", program)]


def _conv(stride, padding, dn=("NHWC", "HWIO", "NHWC"), **kw):
  return lambda x, w: lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=dn, **kw)


# (input size, kernel, stride, padding): each fast form (a map smaller than the kernel: one
# product per kernel tap, strided or not, and with output positions that see only padding;
# stride 1: a native conv with a forward-style gradient, im2col on few channels where the input is
# differentiated; strided: im2col),
# asymmetric padding, 'VALID', the 1x1 strided downsample and a 7x7 stem.
CONVS = [(2, 3, 1, ((1, 1), (1, 1))), (2, 3, 2, ((1, 0), (0, 1))), (2, 3, 1, ((3, 3), (3, 2))),
         (5, 3, 1, "SAME"), (6, 3, 1, "VALID"),
         (8, 3, 2, ((1, 1), (1, 1))), (8, 1, 2, ((0, 0), (0, 0))), (9, 7, 2, ((3, 2), (2, 3)))]


@pytest.mark.parametrize("channels", [3, 6])  # an image's few channels (im2col at stride 1) and more
@pytest.mark.parametrize("hw,kernel,stride,padding", CONVS)
def test_convolutions_and_both_gradients_equal_native(hw, kernel, stride, padding, channels):
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x, w = jax.random.normal(kx, (3, hw, hw, channels)), jax.random.normal(kw, (kernel, kernel, channels, 5))
  native = jax.jit(_conv(stride, padding))
  fast = jax.jit(cpu_lowering(native))
  assert "conv_general_dilated" in _primitives(native, x, w)
  assert "custom_vjp_call" in _primitives(fast, x, w) or hw * hw < kernel * kernel or stride > 1
  np.testing.assert_allclose(fast(x, w), native(x, w), **TOL)
  g = jax.random.normal(kg, native(x, w).shape)
  out, fast_vjp = jax.vjp(fast, x, w)  # differentiated, the forward can take another form
  np.testing.assert_allclose(out, native(x, w), **TOL)
  for a, b in zip(fast_vjp(g), jax.vjp(native, x, w)[1](g)):
    np.testing.assert_allclose(a, b, **TOL)


def test_a_layer_out_to_few_channels_has_the_native_input_gradient():
  # Its input gradient is a conv back from 3 channels (the im2col form's case), higher orders too.
  kx, kw, kg = jax.random.split(jax.random.key(3), 3)
  x, w = jax.random.normal(kx, (2, 7, 7, 6)), jax.random.normal(kw, (3, 3, 6, 3))
  native = _conv(1, "SAME")
  fast = cpu_lowering(native)
  g = jax.random.normal(kg, native(x, w).shape)
  for a, b in zip(jax.vjp(fast, x, w)[1](g), jax.vjp(native, x, w)[1](g)):
    np.testing.assert_allclose(a, b, **TOL)
  second = lambda f: jax.grad(lambda x: (jax.grad(lambda x: (f(x, w) ** 2).sum())(x) ** 2).sum())(x)
  ref = second(native)
  # Two float32 passes whose sums reach ~1e4 while some entries cancel to ~1: rounding relative
  # to the largest entry.
  np.testing.assert_allclose(second(fast), ref, rtol=1e-4, atol=1e-6 * float(np.abs(ref).max()))


@pytest.mark.parametrize("case", ["grouped", "rhs_dilated", "lhs_dilated", "nchw", "bfloat16", "negative_padding"])
def test_forms_not_covered_stay_native(case):
  x, w = jnp.ones((2, 6, 6, 4)), jnp.ones((3, 3, 4, 4))
  native = {
      "grouped": lambda x, w: _conv(1, "SAME", feature_group_count=2)(x, w[:, :, :2]),
      "rhs_dilated": _conv(1, "SAME", rhs_dilation=(2, 2)),
      "lhs_dilated": _conv(1, ((1, 1), (1, 1)), lhs_dilation=(2, 2)),
      "nchw": lambda x, w: _conv(1, "SAME", ("NCHW", "OIHW", "NCHW"))(x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1)),
      "bfloat16": lambda x, w: _conv(1, "SAME")(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)),
      "negative_padding": _conv(1, ((-1, 1), (1, 1))),
  }[case]
  fast = cpu_lowering(native)
  # Not rewritten: the same primitives, no custom gradient, and the same values.
  assert "custom_vjp_call" not in _primitives(fast, x, w)
  np.testing.assert_array_equal(fast(x, w), native(x, w))
  np.testing.assert_array_equal(jax.grad(lambda x: fast(x, w).astype(jnp.float32).sum())(x),
                                jax.grad(lambda x: native(x, w).astype(jnp.float32).sum())(x))


@pytest.mark.parametrize("window,stride,padding", [(3, 2, ((1, 1), (1, 1))), (2, 2, "VALID"), (3, 1, "SAME"),
                                                   (3, 2, "VALID"), (2, 1, ((0, 1), (1, 0))), (3, 3, ((1, 0), (0, 2))),
                                                   (2, 3, "VALID")])
@pytest.mark.parametrize("size", [8, 7])
def test_max_pool_and_its_gradient_equal_select_and_scatter_with_ties(window, stride, padding, size):
  # Rounded ReLU outputs: many windows hold several equal maxima, where the gradient goes to the first.
  # Odd sizes leave rows no window reaches; overlapping windows share rows.
  x = jax.nn.relu(jnp.round(jax.random.normal(jax.random.key(0), (2, size, size, 3))))
  native = jax.jit(lambda x: nn.max_pool(x, (window, window), strides=(stride, stride), padding=padding))
  fast = jax.jit(cpu_lowering(native))
  grad_program = lambda f: _cpu_program(jax.grad(lambda x: f(x).sum()), x)
  assert "select_and_scatter" in grad_program(native) and "select_and_scatter" not in grad_program(fast)
  np.testing.assert_array_equal(fast(x), native(x))
  g = jax.random.normal(jax.random.key(1), native(x).shape)
  # Equal up to the order in which overlapping windows add; a mis-routed tie would be off by O(1).
  np.testing.assert_allclose(jax.vjp(fast, x)[1](g)[0], jax.vjp(native, x)[1](g)[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("window,size", [((2, 3), (4, 9)), ((3, 2), (6, 4)), ((3, 3), (6, 6)), ((1, 2), (3, 4))])
def test_tiling_max_pool_gradient_equals_select_and_scatter_on_non_square_windows(window, size):
  # Windows that tile the map take their own form (`_tiled_max_pool_bwd`); a swapped height and
  # width, or a tie sent to another than the first maximum, would be off by O(1).
  x = jax.nn.relu(jnp.round(jax.random.normal(jax.random.key(0), (2, *size, 3))))
  native = lambda x: lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *window, 1), "VALID")
  fast = cpu_lowering(native)
  g = jax.random.normal(jax.random.key(1), native(x).shape)
  assert "select_and_scatter" not in _cpu_program(jax.grad(lambda x: (fast(x) * g).sum()), x)
  np.testing.assert_array_equal(jax.vjp(fast, x)[1](g)[0], jax.vjp(native, x)[1](g)[0])


class UserCNN(nn.Module):
  """A researcher's own network, written with plain flax layers, and bodies of every kind."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3))(x))  # relu is a custom_jvp; 3 input channels: im2col when differentiated
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.Conv(8, (3, 3))(x)  # 8 input channels: XLA's conv with a forward-style input gradient
    x = nn.remat(nn.Conv)(8, (3, 3), strides=(2, 2))(x)
    x = jax.jit(lambda y: lax.cond(y.sum() > 0, jnp.tanh, jnp.sin, y))(x)
    x = nn.Conv(16, (3, 3))(x)  # 2x2 map: one product per kernel tap
    return nn.Dense(3)(x.reshape(x.shape[0], -1))


def test_a_user_network_with_bodies_of_every_kind_keeps_its_maps_and_gets_every_conv_rewritten():
  model = UserCNN()
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
  variables = model.init(jax.random.key(1), x)
  forward = lambda x: model.apply(variables, x)
  fast = cpu_lowering(forward)
  grad = lambda f: jax.grad(lambda x: f(x)[:, 1].sum())
  np.testing.assert_allclose(jax.jit(fast)(x), jax.jit(forward)(x), **TOL)
  np.testing.assert_allclose(jax.jit(grad(fast))(x), jax.jit(grad(forward))(x), **TOL)
  # Every convolution of the gradient's CPU program is forward-style (no transposed convolution
  # from autodiff), and no max-pool gradient is a select-and-scatter; natively, both are there.
  native, lowered = _cpu_program(grad(forward), x), _cpu_program(grad(fast), x)
  assert set(_conv_layouts(lowered)) == {FORWARD_STYLE} and "select_and_scatter" not in lowered
  assert set(_conv_layouts(native)) - {FORWARD_STYLE} and "select_and_scatter" in native


def test_scan_while_and_custom_vjp_bodies_are_rewritten_and_keep_their_values_and_rules():
  w = jax.random.normal(jax.random.key(2), (3, 3, 6, 6)) / 4  # 6 channels: XLA's conv, not im2col
  conv = _conv(1, "SAME")

  @jax.custom_vjp
  def clipped(x):
    return conv(x, w)

  # The user's rule (the gradient clipped, the convolution ignored) must survive the transform.
  clipped.defvjp(lambda x: (conv(x, w), None), lambda _, g: (jnp.clip(g, -0.5, 0.5),))

  def scanned(x):
    return clipped(lax.scan(lambda c, _: (jnp.tanh(conv(c, w)), None), x, None, length=3)[0])

  def looped(x):  # forward only: reverse mode does not go through a while loop
    return lax.while_loop(lambda c: c[1] < 2, lambda c: (conv(c[0], w), c[1] + 1), (x, 0))[0]

  x = jax.random.normal(jax.random.key(3), (2, 5, 5, 6))
  for f in (scanned, looped):
    np.testing.assert_allclose(jax.jit(cpu_lowering(f))(x), jax.jit(f)(x), **TOL)
  grad = lambda f: jax.grad(lambda x: f(x).sum())
  np.testing.assert_allclose(jax.jit(grad(cpu_lowering(scanned)))(x), jax.jit(grad(scanned))(x), **TOL)
  assert set(_conv_layouts(_cpu_program(grad(cpu_lowering(scanned)), x))) == {FORWARD_STYLE}
  assert set(_conv_layouts(_cpu_program(grad(scanned), x))) != {FORWARD_STYLE}
  assert "while" in _cpu_program(cpu_lowering(looped), x)


def test_under_vmap_and_with_static_arguments_and_pytrees():
  model = UserCNN()
  x = jax.random.normal(jax.random.key(0), (3, 1, 8, 8, 3))
  variables = model.init(jax.random.key(1), x[0])
  apply = cpu_lowering(model.apply)
  assert is_lowered(apply) and cpu_lowering(apply) is apply  # applying it twice is once
  per_image = jax.jit(jax.vmap(lambda xi: apply(variables, xi)))(x)  # variables: a pytree argument
  np.testing.assert_allclose(per_image, jax.jit(jax.vmap(lambda xi: model.apply(variables, xi)))(x), **TOL)
  # Non-array leaves (flags, collection names) are passed through as static.
  out, state = apply(variables, x[0], mutable=["intermediates"])
  assert isinstance(state, dict)


def _library_convolutions(hlo: str) -> int:
  """How many computations that XLA hands to YNNPACK (compiled HLO text) hold a convolution."""
  called = set(re.findall(r"%ynn_fusion[\w.]* = .*calls=%([\w.-]+)", hlo))
  bodies = re.findall(r"^%([\w.-]+) .*?\{\n(.*?)^\}", hlo, re.M | re.S)
  return sum("convolution(" in body for name, body in bodies if name in called)


def test_programs_compile_without_library_convolutions_and_compute_the_same():
  # Every program of the library is compiled with `compiler_options()`: XLA:CPU's YNNPACK fusions
  # for reductions and dots only (the training step lets a dot take in its neighbours), XLA's own
  # (multi-threaded) convolutions. The options change how
  # the program runs, not its values.
  from saliency_jax.attribution.batching import BatchRunner  # pylint: disable=g-import-not-at-top
  from saliency_jax.lowering import compiler_options  # pylint: disable=g-import-not-at-top

  if jax.default_backend() != "cpu":
    assert compiler_options() is None
    return
  if not compiler_options():  # jax>=0.7 is allowed; the option is measured on jaxlib 0.10
    pytest.skip(f"this XLA (jaxlib {jax.__version__}) does not know xla_cpu_experimental_ynn_fusion_type")
  assert compiler_options() == {
      "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
  # An XLA that does not know one of the values keeps the reductions (not XLA's defaults).
  with mock.patch.object(lowering, "_OPTIONS", {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_NEW"}):
    assert compiler_options() == {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}
  assert compiler_options(training=True) == {
      "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_DOT"}
  # 32 channels: XLA's defaults hand these convolutions to the library (16 it keeps, on the CPUs tried).
  model = nn.Sequential([nn.Conv(32, (3, 3)), nn.relu, nn.Conv(32, (3, 3)), lambda y: y.mean((1, 2))])
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  variables = model.init(jax.random.key(1), x)
  fn = lambda v, x: jax.grad(lambda x: cpu_lowering(model.apply)(v, x)[:, 0].sum())(x)
  runner = BatchRunner(jax.devices()[:1])
  maps = runner.run("maps", fn, (x,), (variables,))
  # XLA's defaults on jaxlib 0.10 (the same compiled programs as no option at all, in a process
  # whose XLA_FLAGS do not set it): this process has the library's, set on import (below).
  defaults = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,"
              "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
  default = jax.jit(fn, compiler_options=defaults).lower(variables, x).compile().as_text()
  program = runner._compiled["maps"].lower(variables, x).compile().as_text()  # pylint: disable=protected-access
  assert "convolution(" in program and _library_convolutions(default) and not _library_convolutions(program)
  # XLA's own convolutions and the library's sum in other orders: float32 rounding only.
  np.testing.assert_allclose(maps, jax.jit(fn)(variables, x), rtol=1e-5, atol=1e-6)
  # A researcher's own jax.jit, with no options, compiles as the library's programs do: the package
  # set the option process-wide when it was imported (before JAX started its backend).
  assert f"--xla_cpu_experimental_ynn_fusion_type={compiler_options()['xla_cpu_experimental_ynn_fusion_type']}" \
      in os.environ["XLA_FLAGS"]
  # (Traced at the maps' precision, as the runner's are: a no-op on CPU, TF32 off on a GPU; docs/gpu.md.)
  with jax.default_matmul_precision("highest"):
    plain = jax.jit(fn).lower(variables, x).compile().as_text()
  assert _instructions(plain) == _instructions(program)


def _instructions(hlo: str) -> list[str]:
  """A compiled program's computations, without the source locations a trace records."""
  lines = [line for line in hlo.splitlines() if line.startswith(("%", "ENTRY", "  ", "}"))]
  return [re.sub(r", metadata=\{.*?\}(?=,|$)", "", line) for line in lines]


def test_the_switch_decides_in_one_place_where_forwards_are_bound(monkeypatch):
  from saliency_jax import attribution as A  # pylint: disable=g-import-not-at-top
  from saliency_jax import models  # pylint: disable=g-import-not-at-top
  from saliency_jax.attribution import affine_head  # pylint: disable=g-import-not-at-top

  model = models.create_model("small_cnn", channels=(4, 8))
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  forward = A.ModelForward(model, models.init_variables(model, jax.random.key(1), x.shape))
  target = jnp.array([1, 7])
  # A new function in each setting: JAX reuses a function's trace (make_jaxpr's too) for the same
  # arguments, and the switch is read when a program is traced.
  ig = lambda: lambda f, x: A.integrated_gradients(f, x, target, baseline="zero", steps=4)
  if jax.default_backend() != "cpu":  # the CPU path: nothing to bind elsewhere
    assert not lowering.enabled() and lowering.bind(forward) is forward
    return
  lowered = lambda f, *args: "platform_index" in _primitives(f, *args)  # the fast forms' per-platform choice
  with lowering.configured("on"):
    bound = lowering.bind(forward)
    # A model forward stays one (its layers can be read), running its model's apply lowered.
    assert isinstance(bound, A.ModelForward) and lowering.is_bound(bound) and lowering.bind(bound) is bound
    assert lowered(bound, x) and not lowered(lowering.plain(bound), x) and not lowered(forward, x)
    assert lowered(lowering.bind_arguments(lambda f, x: f(x)), forward, x)  # how a runner binds its forwards
    assert lowered(ig(), forward, x)  # the methods' boundary binds a forward given as it is
    assert len(affine_head.for_path(bound, x).head(x)) == 1 and affine_head.for_path(bound, x).head(x)[0].shape[-1] == 4
    assert lowering.compiler_options()
    on = jax.jit(ig())(forward, x)
  with lowering.configured("off"):  # the plain path a GPU gets: nothing bound, no options, no affine head
    assert not lowering.enabled() and lowering.bind(forward) is forward and lowering.compiler_options() is None
    assert not lowered(ig(), forward, x) and not lowered(lowering.bind_arguments(lambda f, x: f(x)), forward, x)
    assert affine_head.for_path(forward, x).head(x)[0] is x
    off = jax.jit(ig())(forward, x)
  np.testing.assert_allclose(on, off, rtol=1e-5, atol=1e-5 * float(jnp.abs(off).max()))  # float32 rounding only
  # The environment variable is the default a config's 'auto' follows; 'on' and 'off' override it.
  monkeypatch.setenv(lowering.ENV_VAR, "0")
  with lowering.configured("auto"):
    assert not lowering.enabled()
  with lowering.configured("on"):
    assert lowering.enabled()
  monkeypatch.setenv(lowering.ENV_VAR, "maybe")
  with pytest.raises(ValueError, match="SALIENCY_JAX_CPU_LOWERING='maybe' is not allowed"):
    lowering.enabled()
  with pytest.raises(ValueError, match="cpu_lowering='fast' is not allowed; choose one of: 'auto', 'on', 'off'"):
    with lowering.configured("fast"):
      pass
