/* module.c -- the CPython extension jamba_ext._C (limited API 3.9, abi3).
 *
 * No logic lives here: each function converts its arguments into a params struct of jamba.h, releases
 * the GIL, calls jamba_<op>_cpu or jamba_<op>_cuda, and turns a failing status into an exception
 * carrying the core's message (ValueError for argument/shape/dtype errors, RuntimeError otherwise).
 *
 * Calling convention (every op):  _C.<op>(backend, device, stream, <tensors...>, <scalars...>)
 *   backend: 0 = CPU, 1 = CUDA;  device: CUDA ordinal;  stream: cudaStream_t as an int (0 = default)
 *   a tensor is None (absent) or a tuple (data_ptr, dtype_code, shape_tuple, stride_tuple), strides in
 *   elements; dtype codes are jamba_dtype values (jamba_ext/ops.py keeps the table).
 */
#define Py_LIMITED_API 0x03090000
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#include "../jamba.h"

static int read_dims(PyObject *seq, int64_t *dst, int *ndim, const char *what) {
    if (!PyTuple_Check(seq)) {
        PyErr_Format(PyExc_TypeError, "jamba_ext._C: %s must be a tuple", what);
        return -1;
    }
    Py_ssize_t n = PyTuple_Size(seq);
    if (n > JAMBA_MAX_DIMS) {
        PyErr_Format(PyExc_ValueError, "jamba_ext._C: tensors of more than %d dimensions are not supported",
                     JAMBA_MAX_DIMS);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long long v = PyLong_AsLongLong(PyTuple_GetItem(seq, i));
        if (v == -1 && PyErr_Occurred()) return -1;
        dst[i] = (int64_t)v;
    }
    *ndim = (int)n;
    return 0;
}

/* None -> absent tensor; (ptr, dtype, shape, strides) -> jamba_tensor */
static int read_tensor(PyObject *o, jamba_tensor *t) {
    memset(t, 0, sizeof *t);
    if (o == Py_None) return 0;
    if (!PyTuple_Check(o) || PyTuple_Size(o) != 4) {
        PyErr_SetString(PyExc_TypeError, "jamba_ext._C: a tensor is passed as (data_ptr, dtype, shape, strides)");
        return -1;
    }
    unsigned long long ptr = PyLong_AsUnsignedLongLong(PyTuple_GetItem(o, 0));
    if (PyErr_Occurred()) return -1;
    long dt = PyLong_AsLong(PyTuple_GetItem(o, 1));
    if (dt == -1 && PyErr_Occurred()) return -1;
    int nd_shape = 0, nd_stride = 0;
    if (read_dims(PyTuple_GetItem(o, 2), t->shape, &nd_shape, "shape") < 0) return -1;
    if (read_dims(PyTuple_GetItem(o, 3), t->stride, &nd_stride, "strides") < 0) return -1;
    if (nd_shape != nd_stride) {
        PyErr_SetString(PyExc_ValueError, "jamba_ext._C: shape and strides differ in length");
        return -1;
    }
    t->data = (void *)(uintptr_t)ptr;
    t->dtype = (jamba_dtype)dt;
    t->ndim = nd_shape;
    return 0;
}

typedef struct {
    int cuda;
    jamba_launch launch;
} call_ctx;

/* args = (backend, device, stream, t_0 .. t_{nt-1}, s_0 .. s_{ns-1}); scalars returned borrowed. */
static int parse_call(PyObject *args, call_ctx *c, jamba_tensor **ts, int nt, PyObject **scalars, int ns) {
    if (!PyTuple_Check(args) || PyTuple_Size(args) != 3 + nt + ns) {
        PyErr_Format(PyExc_TypeError, "jamba_ext._C: expected %d arguments, got %zd", 3 + nt + ns,
                     PyTuple_Check(args) ? PyTuple_Size(args) : (Py_ssize_t)-1);
        return -1;
    }
    long backend = PyLong_AsLong(PyTuple_GetItem(args, 0));
    long device = PyLong_AsLong(PyTuple_GetItem(args, 1));
    unsigned long long stream = PyLong_AsUnsignedLongLong(PyTuple_GetItem(args, 2));
    if (PyErr_Occurred()) return -1;
    c->cuda = backend == 1;
    c->launch.device = (int)device;
    c->launch.stream = (void *)(uintptr_t)stream;
    for (int i = 0; i < nt; i++)
        if (read_tensor(PyTuple_GetItem(args, 3 + i), ts[i]) < 0) return -1;
    for (int i = 0; i < ns; i++) scalars[i] = PyTuple_GetItem(args, 3 + nt + i);
    return 0;
}

static PyObject *finish(jamba_status s) {
    if (s == JAMBA_OK) Py_RETURN_NONE;
    PyObject *type = (s == JAMBA_ERR_ARG || s == JAMBA_ERR_SHAPE || s == JAMBA_ERR_DTYPE) ? PyExc_ValueError
                                                                                          : PyExc_RuntimeError;
    const char *msg = jamba_last_error();
    PyErr_SetString(type, (msg && msg[0]) ? msg : jamba_status_string(s));
    return NULL;
}

/* Runs cpu_fn(&p) or cuda_fn(&p, launch) without the GIL. */
#define JAMBA_RUN(ctx, p, cpu_fn, cuda_fn)                                    \
    do {                                                                      \
        jamba_status s_;                                                      \
        Py_BEGIN_ALLOW_THREADS                                                \
        s_ = (ctx).cuda ? cuda_fn(&(p), (ctx).launch) : cpu_fn(&(p));         \
        Py_END_ALLOW_THREADS                                                  \
        return finish(s_);                                                    \
    } while (0)

static int as_double(PyObject *o, double *v) {
    *v = PyFloat_AsDouble(o);
    return (*v == -1.0 && PyErr_Occurred()) ? -1 : 0;
}
static int as_bool(PyObject *o, int *v) {
    *v = PyObject_IsTrue(o);
    return *v < 0 ? -1 : 0;
}

static PyObject *py_rms_norm(PyObject *self, PyObject *args) {
    (void)self;
    jamba_rms_norm_params p;
    memset(&p, 0, sizeof p);
    call_ctx c;
    jamba_tensor *ts[] = {&p.out, &p.x, &p.residual, &p.residual_out, &p.weight};
    PyObject *sc[1];
    if (parse_call(args, &c, ts, 5, sc, 1) < 0 || as_double(sc[0], &p.eps) < 0) return NULL;
    JAMBA_RUN(c, p, jamba_rms_norm_cpu, jamba_rms_norm_cuda);
}

static PyObject *py_causal_conv1d(PyObject *self, PyObject *args) {
    (void)self;
    jamba_causal_conv1d_params p;
    memset(&p, 0, sizeof p);
    call_ctx c;
    jamba_tensor *ts[] = {&p.out, &p.x, &p.weight, &p.bias, &p.initial_state, &p.final_state};
    PyObject *sc[1];
    if (parse_call(args, &c, ts, 6, sc, 1) < 0 || as_bool(sc[0], &p.silu) < 0) return NULL;
    JAMBA_RUN(c, p, jamba_causal_conv1d_cpu, jamba_causal_conv1d_cuda);
}

static PyObject *py_causal_conv1d_bwd(PyObject *self, PyObject *args) {
    (void)self;
    jamba_causal_conv1d_bwd_params p;
    memset(&p, 0, sizeof p);
    call_ctx c;
    jamba_tensor *ts[] = {&p.dx, &p.dinitial_state, &p.dweight, &p.dbias, &p.x, &p.weight, &p.bias,
                          &p.initial_state, &p.dout, &p.ws};
    PyObject *sc[1];
    if (parse_call(args, &c, ts, 10, sc, 1) < 0 || as_bool(sc[0], &p.silu) < 0) return NULL;
    JAMBA_RUN(c, p, jamba_causal_conv1d_bwd_cpu, jamba_causal_conv1d_bwd_cuda);
}

static PyObject *py_causal_conv1d_bwd_ws_elems(PyObject *self, PyObject *args) {
    (void)self;
    long long B, DI, L;
    if (!PyArg_ParseTuple(args, "LLL", &B, &DI, &L)) return NULL;
    return PyLong_FromLongLong((long long)jamba_causal_conv1d_bwd_ws_elems(B, DI, L));
}

static PyObject *py_causal_conv1d_update(PyObject *self, PyObject *args) {
    (void)self;
    jamba_causal_conv1d_update_params p;
    memset(&p, 0, sizeof p);
    call_ctx c;
    jamba_tensor *ts[] = {&p.out, &p.x, &p.conv_state, &p.weight, &p.bias};
    PyObject *sc[1];
    if (parse_call(args, &c, ts, 5, sc, 1) < 0 || as_bool(sc[0], &p.silu) < 0) return NULL;
    JAMBA_RUN(c, p, jamba_causal_conv1d_update_cpu, jamba_causal_conv1d_update_cuda);
}

static PyObject *py_selective_scan(PyObject *self, PyObject *args) {
    (void)self;
    jamba_selective_scan_params p;
    memset(&p, 0, sizeof p);
    call_ctx c;
    jamba_tensor *ts[] = {&p.out, &p.u, &p.delta, &p.A, &p.Bm, &p.Cm, &p.D, &p.z, &p.delta_bias,
                          &p.initial_state, &p.last_state};
    PyObject *sc[1];
    if (parse_call(args, &c, ts, 11, sc, 1) < 0 || as_bool(sc[0], &p.delta_softplus) < 0) return NULL;
    JAMBA_RUN(c, p, jamba_selective_scan_cpu, jamba_selective_scan_cuda);
}

static PyObject *py_selective_scan_bwd(PyObject *self, PyObject *args) {
    (void)self;
    jamba_selective_scan_bwd_params p;
    memset(&p, 0, sizeof p);
    call_ctx c;
    jamba_tensor *ts[] = {&p.u, &p.delta, &p.A, &p.Bm, &p.Cm, &p.D, &p.z, &p.delta_bias, &p.initial_state, &p.dout,
                          &p.dlast_state, &p.du, &p.ddelta, &p.dz, &p.dBm, &p.dCm, &p.dA, &p.dD, &p.ddelta_bias,
                          &p.dinitial_state, &p.ws};
    PyObject *sc[1];
    if (parse_call(args, &c, ts, 21, sc, 1) < 0 || as_bool(sc[0], &p.delta_softplus) < 0) return NULL;
    JAMBA_RUN(c, p, jamba_selective_scan_bwd_cpu, jamba_selective_scan_bwd_cuda);
}

static PyObject *py_selective_scan_bwd_ws_elems(PyObject *self, PyObject *args) {
    (void)self;
    long long B, DI, L, N;
    if (!PyArg_ParseTuple(args, "LLLL", &B, &DI, &L, &N)) return NULL;
    return PyLong_FromLongLong((long long)jamba_selective_scan_bwd_ws_elems(B, DI, L, N));
}

static PyObject *py_selective_state_update(PyObject *self, PyObject *args) {
    (void)self;
    jamba_selective_state_update_params p;
    memset(&p, 0, sizeof p);
    call_ctx c;
    jamba_tensor *ts[] = {&p.out, &p.state, &p.x, &p.dt, &p.A, &p.Bm, &p.Cm, &p.D, &p.z, &p.dt_bias};
    PyObject *sc[1];
    if (parse_call(args, &c, ts, 10, sc, 1) < 0 || as_bool(sc[0], &p.dt_softplus) < 0) return NULL;
    JAMBA_RUN(c, p, jamba_selective_state_update_cpu, jamba_selective_state_update_cuda);
}

/* JAMBA_MOE_PY_BEGIN */
static int as_int64(PyObject *o, int64_t *v) {
    long long x = PyLong_AsLongLong(o);
    if (x == -1 && PyErr_Occurred()) return -1;
    *v = (int64_t)x;
    return 0;
}

static PyObject *py_moe_route(PyObject *self, PyObject *args) {
    (void)self;
    jamba_moe_route_params p;
    memset(&p, 0, sizeof p);
    call_ctx c;
    jamba_tensor *ts[] = {&p.weights, &p.expert_ids, &p.expert_offsets, &p.sorted_slots, &p.logits};
    PyObject *sc[1];
    if (parse_call(args, &c, ts, 5, sc, 1) < 0 || as_int64(sc[0], &p.top_k) < 0) return NULL;
    JAMBA_RUN(c, p, jamba_moe_route_cpu, jamba_moe_route_cuda);
}

static PyObject *py_moe_permute(PyObject *self, PyObject *args) {
    (void)self;
    jamba_moe_permute_params p;
    memset(&p, 0, sizeof p);
    call_ctx c;
    jamba_tensor *ts[] = {&p.expert_offsets, &p.sorted_slots, &p.expert_ids};
    PyObject *sc[1];
    if (parse_call(args, &c, ts, 3, sc, 1) < 0 || as_int64(sc[0], &p.num_experts) < 0) return NULL;
    JAMBA_RUN(c, p, jamba_moe_permute_cpu, jamba_moe_permute_cuda);
}

static PyObject *py_moe_experts(PyObject *self, PyObject *args) {
    (void)self;
    jamba_moe_experts_params p;
    memset(&p, 0, sizeof p);
    call_ctx c;
    jamba_tensor *ts[] = {&p.out, &p.x, &p.weights, &p.expert_ids, &p.expert_offsets, &p.sorted_slots,
                          &p.w_gate_up, &p.w_down, &p.act, &p.slot_out, &p.sched};
    PyObject *sc[1];
    int64_t impl = 0;
    if (parse_call(args, &c, ts, 11, sc, 1) < 0 || as_int64(sc[0], &impl) < 0) return NULL;
    p.impl = (int)impl;
    JAMBA_RUN(c, p, jamba_moe_experts_cpu, jamba_moe_experts_cuda);
}

static PyObject *py_dequant_fp8(PyObject *self, PyObject *args) {
    (void)self;
    jamba_dequant_fp8_params p;
    memset(&p, 0, sizeof p);
    call_ctx c;
    jamba_tensor *ts[] = {&p.out, &p.q, &p.scale, &p.group_offsets};
    if (parse_call(args, &c, ts, 4, NULL, 0) < 0) return NULL;
    JAMBA_RUN(c, p, jamba_dequant_fp8_cpu, jamba_dequant_fp8_cuda);
}

static PyObject *py_moe_experts_fp8(PyObject *self, PyObject *args) {
    (void)self;
    jamba_moe_experts_fp8_params p;
    memset(&p, 0, sizeof p);
    call_ctx c;
    jamba_tensor *ts[] = {&p.out, &p.x, &p.weights, &p.expert_ids, &p.w_gate_up, &p.s_gate_up, &p.w_down,
                          &p.s_down, &p.act, &p.expert_offsets, &p.sorted_slots, &p.slot_out, &p.act8, &p.x_scale,
                          &p.act_scale, &p.sched};
    if (parse_call(args, &c, ts, 16, NULL, 0) < 0) return NULL;
    JAMBA_RUN(c, p, jamba_moe_experts_fp8_cpu, jamba_moe_experts_fp8_cuda);
}

static PyObject *py_silu_mul(PyObject *self, PyObject *args) {
    (void)self;
    jamba_silu_mul_params p;
    memset(&p, 0, sizeof p);
    call_ctx c;
    jamba_tensor *ts[] = {&p.out, &p.gate_up};
    if (parse_call(args, &c, ts, 2, NULL, 0) < 0) return NULL;
    JAMBA_RUN(c, p, jamba_silu_mul_cpu, jamba_silu_mul_cuda);
}

static PyObject *py_silu_mul_bwd(PyObject *self, PyObject *args) {
    (void)self;
    jamba_silu_mul_bwd_params p;
    memset(&p, 0, sizeof p);
    call_ctx c;
    jamba_tensor *ts[] = {&p.dgate_up, &p.gate_up, &p.dout};
    if (parse_call(args, &c, ts, 3, NULL, 0) < 0) return NULL;
    JAMBA_RUN(c, p, jamba_silu_mul_bwd_cpu, jamba_silu_mul_bwd_cuda);
}

static PyObject *py_cross_entropy(PyObject *self, PyObject *args) {
    (void)self;
    jamba_cross_entropy_params p;
    memset(&p, 0, sizeof p);
    call_ctx c;
    jamba_tensor *ts[] = {&p.loss, &p.lse, &p.logits, &p.target};
    PyObject *sc[1];
    if (parse_call(args, &c, ts, 4, sc, 1) < 0 || as_int64(sc[0], &p.ignore_index) < 0) return NULL;
    JAMBA_RUN(c, p, jamba_cross_entropy_cpu, jamba_cross_entropy_cuda);
}

static PyObject *py_cross_entropy_bwd(PyObject *self, PyObject *args) {
    (void)self;
    jamba_cross_entropy_bwd_params p;
    memset(&p, 0, sizeof p);
    call_ctx c;
    jamba_tensor *ts[] = {&p.dlogits, &p.logits, &p.target, &p.lse, &p.dloss};
    PyObject *sc[1];
    if (parse_call(args, &c, ts, 5, sc, 1) < 0 || as_int64(sc[0], &p.ignore_index) < 0) return NULL;
    JAMBA_RUN(c, p, jamba_cross_entropy_bwd_cpu, jamba_cross_entropy_bwd_cuda);
}

static PyObject *py_sample_rows(PyObject *self, PyObject *args) {
    (void)self;
    jamba_sample_rows_params p;
    memset(&p, 0, sizeof p);
    call_ctx c;
    jamba_tensor *ts[] = {&p.tokens, &p.tau, &p.logits, &p.params, &p.seen, &p.counts, &p.ws, &p.rng};
    PyObject *sc[2];
    int64_t seed, offset;
    if (parse_call(args, &c, ts, 8, sc, 2) < 0 || as_int64(sc[0], &seed) < 0 || as_int64(sc[1], &offset) < 0)
        return NULL;
    p.seed = (uint64_t)seed;
    p.offset = (uint64_t)offset;
    JAMBA_RUN(c, p, jamba_sample_rows_cpu, jamba_sample_rows_cuda);
}

static PyObject *py_gemv(PyObject *self, PyObject *args) {
    (void)self;
    jamba_gemv_params p;
    memset(&p, 0, sizeof p);
    call_ctx c;
    jamba_tensor *ts[] = {&p.out, &p.x, &p.weight, &p.bias};
    if (parse_call(args, &c, ts, 4, NULL, 0) < 0) return NULL;
    JAMBA_RUN(c, p, jamba_gemv_cpu, jamba_gemv_cuda);
}

static PyObject *py_decode_attention(PyObject *self, PyObject *args) {
    (void)self;
    jamba_decode_attention_params p;
    memset(&p, 0, sizeof p);
    call_ctx c;
    jamba_tensor *ts[] = {&p.out, &p.q, &p.k, &p.v, &p.key_mask, &p.part_ml, &p.part_o};
    PyObject *sc[1];
    if (parse_call(args, &c, ts, 7, sc, 1) < 0 || as_double(sc[0], &p.scale) < 0) return NULL;
    JAMBA_RUN(c, p, jamba_decode_attention_cpu, jamba_decode_attention_cuda);
}

static PyObject *py_moe_combine(PyObject *self, PyObject *args) {
    (void)self;
    jamba_moe_combine_params p;
    memset(&p, 0, sizeof p);
    call_ctx c;
    jamba_tensor *ts[] = {&p.out, &p.y, &p.weights, &p.expert_ids, &p.sorted_slots, &p.slot_pos};
    PyObject *sc[1];
    if (parse_call(args, &c, ts, 6, sc, 1) < 0 || as_int64(sc[0], &p.num_experts) < 0) return NULL;
    JAMBA_RUN(c, p, jamba_moe_combine_cpu, jamba_moe_combine_cuda);
}
static PyObject *py_moe_grad_rows(PyObject *self, PyObject *args) {
    (void)self;
    jamba_moe_grad_rows_params p;
    memset(&p, 0, sizeof p);
    call_ctx c;
    jamba_tensor *ts[] = {&p.dys, &p.dws, &p.go, &p.y, &p.weights, &p.sorted_slots};
    if (parse_call(args, &c, ts, 6, NULL, 0) < 0) return NULL;
    JAMBA_RUN(c, p, jamba_moe_grad_rows_cpu, jamba_moe_grad_rows_cuda);
}
/* JAMBA_MOE_PY_END */

static PyObject *py_rms_norm_segments(PyObject *self, PyObject *args) {
    (void)self;
    jamba_rms_norm_segments_params p;
    memset(&p, 0, sizeof p);
    call_ctx c;
    jamba_tensor *ts[] = {&p.out, &p.x, &p.weight};
    PyObject *sc[1 + JAMBA_NORM_MAX_SEGS];
    if (parse_call(args, &c, ts, 3, sc, 1 + JAMBA_NORM_MAX_SEGS) < 0 || as_double(sc[0], &p.eps) < 0) return NULL;
    for (int i = 0; i < JAMBA_NORM_MAX_SEGS; i++) { /* segment ends, 0 after the last */
        if (as_int64(sc[1 + i], &p.ends[i]) < 0) return NULL;
        if (p.ends[i] > 0) p.nseg = i + 1;
    }
    JAMBA_RUN(c, p, jamba_rms_norm_segments_cpu, jamba_rms_norm_segments_cuda);
}

static PyObject *py_rms_norm_bwd(PyObject *self, PyObject *args) {
    (void)self;
    jamba_rms_norm_bwd_params p;
    memset(&p, 0, sizeof p);
    call_ctx c;
    jamba_tensor *ts[] = {&p.dx, &p.dweight, &p.x, &p.weight, &p.dy, &p.ws};
    PyObject *sc[1 + JAMBA_NORM_MAX_SEGS];
    if (parse_call(args, &c, ts, 6, sc, 1 + JAMBA_NORM_MAX_SEGS) < 0 || as_double(sc[0], &p.eps) < 0) return NULL;
    for (int i = 0; i < JAMBA_NORM_MAX_SEGS; i++) { /* segment ends, 0 after the last */
        if (as_int64(sc[1 + i], &p.ends[i]) < 0) return NULL;
        if (p.ends[i] > 0) p.nseg = i + 1;
    }
    JAMBA_RUN(c, p, jamba_rms_norm_bwd_cpu, jamba_rms_norm_bwd_cuda);
}

static PyObject *py_rms_norm_bwd_ws_elems(PyObject *self, PyObject *args) {
    (void)self;
    long long rows, dim;
    if (!PyArg_ParseTuple(args, "LL", &rows, &dim)) return NULL;
    return PyLong_FromLongLong((long long)jamba_rms_norm_bwd_ws_elems(rows, dim));
}

static PyObject *py_mamba_inner_step(PyObject *self, PyObject *args) {
    (void)self;
    jamba_mamba_inner_step_params p;
    memset(&p, 0, sizeof p);
    call_ctx c;
    jamba_tensor *ts[] = {&p.out, &p.x, &p.z, &p.conv_state, &p.conv_weight, &p.conv_bias, &p.xproj_weight,
                          &p.norm_weight, &p.dtproj_weight, &p.A, &p.D, &p.dt_bias, &p.ssm_state, &p.ws, &p.work};
    PyObject *sc[2];
    if (parse_call(args, &c, ts, 15, sc, 2) < 0 || as_int64(sc[0], &p.dt_rank) < 0 || as_double(sc[1], &p.eps) < 0)
        return NULL;
    JAMBA_RUN(c, p, jamba_mamba_inner_step_cpu, jamba_mamba_inner_step_cuda);
}

static PyObject *py_mamba_inner_step_work_elems(PyObject *self, PyObject *args) {
    (void)self;
    long long DI, B, NO;
    if (!PyArg_ParseTuple(args, "LLL", &DI, &B, &NO)) return NULL;
    return PyLong_FromLongLong((long long)jamba_mamba_inner_step_work_elems(DI, B, NO));
}

static PyObject *py_has_cuda(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return PyBool_FromLong(jamba_has_cuda());
}

#ifndef JAMBA_CUDA_ARCHS
#define JAMBA_CUDA_ARCHS "" /* setup.py defines it as the JAMBA_EXT_ARCHS list of a CUDA build, e.g. "80;90" */
#endif
static PyObject *py_cuda_archs(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return PyUnicode_FromString(JAMBA_CUDA_ARCHS);
}

#ifndef JAMBA_CUDA_NOTE
#define JAMBA_CUDA_NOTE "" /* setup.py: why a build has no CUDA kernels (no toolkit, JAMBA_EXT_CUDA=0, nvcc failed) */
#endif
static PyObject *py_cuda_note(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return PyUnicode_FromString(JAMBA_CUDA_NOTE);
}

static PyMethodDef methods[] = {
    {"has_cuda", py_has_cuda, METH_NOARGS, "True when the CUDA kernels were compiled in."},
    {"cuda_archs", py_cuda_archs, METH_NOARGS, "The CUDA architectures compiled in, e.g. \"80;90\" (\"\": none)."},
    {"cuda_note", py_cuda_note, METH_NOARGS, "Why the build has no CUDA kernels (\"\" when it has them)."},
    {"rms_norm", py_rms_norm, METH_VARARGS, "rms_norm / add_rms_norm (see csrc/jamba.h)."},
    {"rms_norm_segments", py_rms_norm_segments, METH_VARARGS, "rms_norm_segments (see csrc/jamba.h)."},
    {"causal_conv1d", py_causal_conv1d, METH_VARARGS, "causal_conv1d (see csrc/jamba.h)."},
    {"causal_conv1d_update", py_causal_conv1d_update, METH_VARARGS, "causal_conv1d_update (see csrc/jamba.h)."},
    {"selective_scan", py_selective_scan, METH_VARARGS, "selective_scan (see csrc/jamba.h)."},
    {"selective_scan_bwd", py_selective_scan_bwd, METH_VARARGS, "selective_scan_bwd (see csrc/jamba.h)."},
    {"selective_scan_bwd_ws_elems", py_selective_scan_bwd_ws_elems, METH_VARARGS,
     "f32 elements of selective_scan_bwd's CUDA workspace for (B, DI, L, N); 0: no CUDA path (N > 32)."},
    {"selective_state_update", py_selective_state_update, METH_VARARGS,
     "selective_state_update (see csrc/jamba.h)."},
    {"mamba_inner_step", py_mamba_inner_step, METH_VARARGS, "mamba_inner_step (see csrc/jamba.h)."},
    {"mamba_inner_step_work_elems", py_mamba_inner_step_work_elems, METH_VARARGS,
     "int64 elements of mamba_inner_step's CUDA workspace for (d_inner, batch, x_proj outputs)."},
    /* JAMBA_MOE_METHODS */
    {"moe_route", py_moe_route, METH_VARARGS, "moe_route (see csrc/jamba.h)."},
    {"moe_permute", py_moe_permute, METH_VARARGS, "moe_permute (see csrc/jamba.h)."},
    {"moe_experts", py_moe_experts, METH_VARARGS, "moe_experts (see csrc/jamba.h)."},
    {"dequant_fp8", py_dequant_fp8, METH_VARARGS, "dequant_fp8 (see csrc/jamba.h)."},
    {"moe_experts_fp8", py_moe_experts_fp8, METH_VARARGS, "moe_experts_fp8 (see csrc/jamba.h)."},
    {"silu_mul", py_silu_mul, METH_VARARGS, "silu_mul (see csrc/jamba.h)."},
    {"silu_mul_bwd", py_silu_mul_bwd, METH_VARARGS, "silu_mul_bwd (see csrc/jamba.h)."},
    {"rms_norm_bwd", py_rms_norm_bwd, METH_VARARGS, "rms_norm_bwd (see csrc/jamba.h)."},
    {"rms_norm_bwd_ws_elems", py_rms_norm_bwd_ws_elems, METH_VARARGS,
     "f32 workspace elements of rms_norm_bwd on CUDA for (rows, dim)."},
    {"causal_conv1d_bwd", py_causal_conv1d_bwd, METH_VARARGS, "causal_conv1d_bwd (see csrc/jamba.h)."},
    {"causal_conv1d_bwd_ws_elems", py_causal_conv1d_bwd_ws_elems, METH_VARARGS,
     "f32 workspace elements of causal_conv1d_bwd on CUDA for (B, DI, L)."},
    {"gemv", py_gemv, METH_VARARGS, "gemv (see csrc/jamba.h)."},
    {"moe_grad_rows", py_moe_grad_rows, METH_VARARGS, "moe_grad_rows (see csrc/jamba.h)."},
    {"cross_entropy", py_cross_entropy, METH_VARARGS, "cross_entropy (see csrc/jamba.h)."},
    {"cross_entropy_bwd", py_cross_entropy_bwd, METH_VARARGS, "cross_entropy_bwd (see csrc/jamba.h)."},
    {"sample_rows", py_sample_rows, METH_VARARGS, "sample_rows (see csrc/jamba.h)."},
    {"decode_attention", py_decode_attention, METH_VARARGS, "decode_attention (see csrc/jamba.h)."},
    {"moe_combine", py_moe_combine, METH_VARARGS, "moe_combine (see csrc/jamba.h)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_C", "jamba_ext native core (C and CUDA C kernels).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&moduledef); }
