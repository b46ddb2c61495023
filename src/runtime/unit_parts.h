// The parts of a unit under a placement, and what each rank does for each sequence of it.
//
// A unit's parts are the shares the placement gives it, one per device that serves it, in device
// order. Every rank derives the same roles from the same placement, so no message says who
// serves what:
//  - batch slice: the sequence in slot i of n is served by the part whose [offset, offset+share)
//    holds (i + 0.5) / n;
//  - token slice: every part attends its slice of the rows; the last part (the tail) appends the
//    new rows;
//  - whole unit and query slice: the holder keeps the unit's whole KV, appends and attends.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "placement/placement.h"

namespace fairkv::runtime {

// One part of a unit in one layer.
struct UnitPart {
  int device = 0;
  placement::Share share;
};

// [layer][head] -> the unit's parts in device order.
std::vector<std::vector<std::vector<UnitPart>>> unit_parts(const placement::Placement& p);

// `device`'s part among a unit's parts, or null.
const UnitPart* part_of(const std::vector<UnitPart>& parts, int device);

// True when `device` is the unit's tail, its last part in device order.
bool is_tail(const std::vector<UnitPart>& parts, int device);

// The device that serves batch slot `slot` of a unit split by sequences.
int batch_owner(const std::vector<UnitPart>& parts, int slot, int n_slots);

// What a rank does for one unit and one sequence.
struct Role {
  bool serve = false;   // computes attention over its rows
  bool append = false;  // stores the new tokens' keys and values
};
Role role_of(const std::vector<UnitPart>& parts, int rank, int slot, int n_slots);

// True when `rank` projects the unit's queries, keys and values and applies its Wo: it serves
// the unit, and not as a token slice other than the tail.
bool projects_unit(const std::vector<UnitPart>& parts, int rank);

// Whether `rank`'s cached rows count towards a unit's length: a query slice's holders keep
// copies, so only the first one's count.
bool counts(const std::vector<UnitPart>& parts, int rank);

// The rows [first, second) of a unit's `total` cached rows of the sequence in `slot` that `rank`
// keeps; {0, 0} when none. Token slices tile the rows: a part ends where the next begins, at its
// share's offset of the rows rounded to a multiple of `granule` (kv::kCanonicalRows under the
// canonical reduction, so that every slice but the tail holds whole blocks of the canonical
// order), never beyond the last multiple of `granule` within total.
std::pair<int64_t, int64_t> rows_kept(const std::vector<UnitPart>& parts, int rank, int slot,
                                      int n_slots, int64_t total, int64_t granule = 1);

// The same for unit (layer, head) under placement p (the rule RankForward::redistribute
// applies).
std::pair<int64_t, int64_t> rows_held(const placement::Placement& p, int layer, int head,
                                      int device, int slot, int n_slots, int64_t total,
                                      int64_t granule = 1);

}  // namespace fairkv::runtime
