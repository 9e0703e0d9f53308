"""layers.dense: x @ w with a weight gradient computed as one canonical dot (YNNPACK on CPU)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prefjax.models.layers import dense, transposed


def test_transposed_is_the_transpose():
  x = jnp.arange(12.0).reshape(3, 4)
  np.testing.assert_array_equal(jax.jit(transposed)(x), x.T)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_dense_value_and_gradients_equal_autodiff_of_matmul(dtype, tol):
  k = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(k[0], (2, 5, 8), dtype)
  w = (jax.random.normal(k[1], (8, 6)) * 0.3).astype(dtype)
  t = jax.random.normal(k[2], (2, 5, 6))
  loss = lambda f: (lambda x, w: (jnp.tanh(f(x, w).astype(jnp.float32)) * t).sum())
  want_v, want_g = jax.jit(jax.value_and_grad(loss(jnp.matmul), argnums=(0, 1)))(x, w)
  got_v, got_g = jax.jit(jax.value_and_grad(loss(dense), argnums=(0, 1)))(x, w)
  np.testing.assert_allclose(got_v, want_v, rtol=tol, atol=tol)
  for a, b in zip(got_g, want_g):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               rtol=tol, atol=tol)
  assert float(jnp.abs(want_g[1].astype(jnp.float32)).max()) > 1e-2


def test_weight_gradient_dot_is_canonical_on_cpu():
  """Every dot of the compiled gradient contracts the LHS over its minor dimension."""
  if jax.default_backend() != "cpu":
    pytest.skip("CPU lowering only")
  x = jnp.ones((4, 16, 32))
  w = jnp.ones((32, 64))
  hlo = jax.jit(jax.grad(lambda w: dense(x, w).sum())).lower(w).compile().as_text()
  dots = [l for l in hlo.splitlines() if " dot(" in l]
  assert dots and all("lhs_contracting_dims={1}" in l or "lhs_contracting_dims={2}" in l
                      for l in dots), dots
