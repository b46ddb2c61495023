#include "runtime/unit_parts.h"

#include <algorithm>
#include <cmath>

namespace fairkv::runtime {

using placement::ShareKind;

std::vector<std::vector<std::vector<UnitPart>>> unit_parts(const placement::Placement& p) {
  std::vector<std::vector<std::vector<UnitPart>>> parts(p.layers.size());
  for (size_t l = 0; l < p.layers.size(); ++l) {
    parts[l].resize(size_t(p.kv_heads));
    for (int d = 0; d < p.devices; ++d)
      for (const placement::Share& s : p.layers[l].devices[size_t(d)])
        parts[l][size_t(s.head)].push_back({d, s});
  }
  return parts;
}

const UnitPart* part_of(const std::vector<UnitPart>& parts, int device) {
  for (const UnitPart& u : parts)
    if (u.device == device) return &u;
  return nullptr;
}

bool is_tail(const std::vector<UnitPart>& parts, int device) {
  return parts.back().device == device;
}

int batch_owner(const std::vector<UnitPart>& parts, int slot, int n_slots) {
  const double x = (slot + 0.5) / n_slots;
  int owner = parts.front().device;
  for (const UnitPart& u : parts)
    if (u.share.offset <= x) owner = u.device;
  return owner;
}

Role role_of(const std::vector<UnitPart>& parts, int rank, int slot, int n_slots) {
  const UnitPart* mine = part_of(parts, rank);
  if (!mine) return {};
  switch (mine->share.kind) {
    case ShareKind::Whole:
    case ShareKind::Query:
      return {true, true};
    case ShareKind::Batch: {
      const bool own = batch_owner(parts, slot, n_slots) == rank;
      return {own, own};
    }
    case ShareKind::Tokens:
      return {true, is_tail(parts, rank)};
  }
  return {};
}

bool projects_unit(const std::vector<UnitPart>& parts, int rank) {
  const UnitPart* mine = part_of(parts, rank);
  return mine && (mine->share.kind != ShareKind::Tokens || is_tail(parts, rank));
}

bool counts(const std::vector<UnitPart>& parts, int rank) {
  const UnitPart* p = part_of(parts, rank);
  if (!p) return true;  // holds nothing of it, or leftovers from an older placement
  return p->share.kind != ShareKind::Query || &parts.front() == p;
}

std::pair<int64_t, int64_t> rows_kept(const std::vector<UnitPart>& parts, int rank, int slot,
                                      int n_slots, int64_t total, int64_t granule) {
  const UnitPart* mine = part_of(parts, rank);
  if (!mine) return {0, 0};
  switch (mine->share.kind) {
    case ShareKind::Whole:
    case ShareKind::Query:
      return {0, total};
    case ShareKind::Batch:
      return batch_owner(parts, slot, n_slots) == rank ? std::pair<int64_t, int64_t>{0, total}
                                                       : std::pair<int64_t, int64_t>{0, 0};
    case ShareKind::Tokens: {
      const int64_t last = total / granule * granule;
      auto cut = [&](double offset) {
        return std::clamp<int64_t>(granule * std::llround(offset * double(total) / double(granule)),
                                   0, last);
      };
      const int64_t b = cut(mine->share.offset);
      const int64_t e =
          (&parts.back() == mine) ? total : std::max(b, cut((mine + 1)->share.offset));
      return {b, e};
    }
  }
  return {0, 0};
}

std::pair<int64_t, int64_t> rows_held(const placement::Placement& p, int layer, int head,
                                      int device, int slot, int n_slots, int64_t total,
                                      int64_t granule) {
  std::vector<UnitPart> parts;
  for (int d = 0; d < p.devices; ++d)
    for (const placement::Share& s : p.layers[size_t(layer)].devices[size_t(d)])
      if (s.head == head) parts.push_back({d, s});
  if (parts.empty()) return {0, 0};
  return rows_kept(parts, device, slot, n_slots, total, granule);
}

}  // namespace fairkv::runtime
