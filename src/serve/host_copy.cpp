#include "serve/host_copy.h"

#include <stdexcept>
#include <utility>

#include "kernels/types.h"

namespace fairkv::serve {

namespace {

kernels::DType dtype_of(kv::KvType t) {
  return t == kv::KvType::F16 ? kernels::DType::F16 : kernels::DType::F32;
}

}  // namespace

size_t HostCopy::bytes() const {
  size_t b = 0;
  for (const Store& s : stores) b += s.k.size() + s.v.size();
  return b;
}

HostCopy copy_to_host(const kv::SequenceCache& cache) {
  HostCopy out;
  out.n_past = cache.n_past;
  std::vector<float> row;
  for (int l = 0; l < cache.n_layers(); ++l)
    for (int h = 0; h < cache.n_kv_heads(); ++h) {
      const kv::HeadStore& st = cache.head(l, h);
      if (st.size() == 0) continue;
      const int64_t hd = st.head_dim();
      const size_t row_bytes = size_t(hd) * kv::kv_type_bytes(st.type());
      HostCopy::Store s{l, h, st.size(), {}, {}};
      s.k.resize(size_t(st.size()) * row_bytes);
      s.v.resize(s.k.size());
      row.resize(size_t(hd));
      // Keys sit in transposed panels: read them back as rows. Converting the store's values to
      // float and back to its type is exact.
      for (int64_t i = 0; i < st.size(); ++i) {
        st.k_row(i, row.data());
        kernels::quantize_row(dtype_of(st.type()), row.data(), &s.k[size_t(i) * row_bytes], hd);
        st.v_row(i, row.data());
        kernels::quantize_row(dtype_of(st.type()), row.data(), &s.v[size_t(i) * row_bytes], hd);
      }
      out.stores.push_back(std::move(s));
    }
  return out;
}

void restore_from_host(const HostCopy& copy, kv::SequenceCache& cache) {
  if (cache.bytes() != 0) throw std::logic_error("restore_from_host: the cache is not empty");
  std::vector<float> k, v;
  for (const HostCopy::Store& s : copy.stores) {
    kv::HeadStore& st = cache.head(s.layer, s.head);
    const int64_t n = s.rows * st.head_dim();
    k.resize(size_t(n));
    v.resize(size_t(n));
    kernels::dequantize_row(dtype_of(st.type()), s.k.data(), k.data(), n);
    kernels::dequantize_row(dtype_of(st.type()), s.v.data(), v.data(), n);
    st.append(k.data(), v.data(), s.rows);
  }
  cache.n_past = copy.n_past;
}

}  // namespace fairkv::serve
