// A small SVG line chart: one polyline per series over shared axes, with a legend.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace fairkv::app {

struct Series {
  std::string name;
  std::vector<std::pair<double, double>> points;  // (x, y)
};

std::string svg_line_chart(const std::string& title, const std::string& x_label,
                           const std::string& y_label, const std::vector<Series>& series);

// Charts made by svg_line_chart, one under the other, as one SVG document.
std::string svg_stack(const std::vector<std::string>& charts);

}  // namespace fairkv::app
