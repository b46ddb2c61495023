#include "runtime/unit_parts.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace fairkv::runtime {
namespace {

using placement::Share;
using placement::ShareKind;

// A unit cut into token slices of the given shares on devices 0, 1, ...
std::vector<UnitPart> token_parts(const std::vector<double>& shares) {
  std::vector<UnitPart> parts;
  double offset = 0;
  for (size_t d = 0; d < shares.size(); ++d) {
    parts.push_back({int(d), Share{0, shares[d], ShareKind::Tokens, offset}});
    offset += shares[d];
  }
  return parts;
}

// Token slices tile [0, total) in device order, the tail ends at total, and every other slice
// ends at its share's offset rounded to the nearest multiple of the granule (never beyond the
// last one within total), so that under the canonical order each holds whole blocks.
TEST(UnitParts, TokenSlicesTileTheRowsAtMultiplesOfTheGranule) {
  const std::vector<std::vector<double>> cases = {
      {0.5, 0.5}, {0.3, 0.3, 0.4}, {0.1, 0.2, 0.3, 0.4}, {0.05, 0.9, 0.05}};
  for (const auto& shares : cases)
    for (const int64_t granule : {int64_t(1), int64_t(64), int64_t(256)})
      for (const int64_t total : {int64_t(0), int64_t(37), int64_t(64), int64_t(301), int64_t(1000),
                                  int64_t(1300), int64_t(4099)}) {
        SCOPED_TRACE("total " + std::to_string(total) + " granule " + std::to_string(granule) +
                     " parts " + std::to_string(shares.size()));
        const auto parts = token_parts(shares);
        int64_t next = 0;
        for (size_t d = 0; d < parts.size(); ++d) {
          const auto [b, e] = rows_kept(parts, int(d), 0, 1, total, granule);
          EXPECT_EQ(b, next);
          EXPECT_LE(b, e);
          EXPECT_EQ(b % granule, 0);
          if (d + 1 == parts.size()) {
            EXPECT_EQ(e, total);
          } else {
            const double want = parts[d + 1].share.offset * double(total);
            const int64_t last = total / granule * granule;
            EXPECT_EQ(e % granule, 0);
            EXPECT_LE(e, last);
            // The nearest multiple of the share's end (or the last one, or b).
            EXPECT_LE(std::fabs(double(e) - std::min(want, double(last))),
                      double(granule) / 2 + 0.5)
                << "slice " << d;
          }
          next = e;
        }
      }
}

// Whole units and batch slices keep every row (or none), whatever the granule.
TEST(UnitParts, OtherSharesIgnoreTheGranule) {
  const std::vector<UnitPart> whole = {{0, Share{0, 1.0, ShareKind::Whole, 0}}};
  EXPECT_EQ(rows_kept(whole, 0, 0, 1, 301, 64), (std::pair<int64_t, int64_t>{0, 301}));
  const std::vector<UnitPart> batch = {{0, Share{0, 0.5, ShareKind::Batch, 0}},
                                       {1, Share{0, 0.5, ShareKind::Batch, 0.5}}};
  EXPECT_EQ(rows_kept(batch, 1, 3, 4, 301, 64), (std::pair<int64_t, int64_t>{0, 301}));
  EXPECT_EQ(rows_kept(batch, 0, 3, 4, 301, 64), (std::pair<int64_t, int64_t>{0, 0}));
}

}  // namespace
}  // namespace fairkv::runtime
