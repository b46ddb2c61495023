#include "serve/peer_socket.h"

#include <dirent.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>

#include <cstdlib>

namespace fairkv::serve {

namespace {

// The numeric address and port of a socket address, written as httplib writes them
// (getnameinfo with NI_NUMERICHOST), so that the two compare as strings.
bool numeric(const sockaddr_storage& a, socklen_t len, std::string& ip, int& port) {
  char host[NI_MAXHOST], serv[NI_MAXSERV];
  if (getnameinfo(reinterpret_cast<const sockaddr*>(&a), len, host, sizeof host, serv, sizeof serv,
                  NI_NUMERICHOST | NI_NUMERICSERV) != 0)
    return false;
  ip = host;
  port = std::atoi(serv);
  return true;
}

bool is_connection(int fd, const std::string& local_addr, int local_port,
                   const std::string& remote_addr, int remote_port) {
  sockaddr_storage a{};
  socklen_t len = sizeof a;
  std::string ip;
  int port = -1;
  // getsockname fails on what is not a socket (files, pipes): the cheap test first.
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0 ||
      (a.ss_family != AF_INET && a.ss_family != AF_INET6) || !numeric(a, len, ip, port) ||
      port != local_port || ip != local_addr)
    return false;
  len = sizeof a;
  return getpeername(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0 && numeric(a, len, ip, port) &&
         port == remote_port && ip == remote_addr;
}

}  // namespace

int find_connection_fd(const std::string& local_addr, int local_port,
                       const std::string& remote_addr, int remote_port) {
  if (local_port <= 0 || remote_port <= 0) return -1;
  DIR* dir = opendir("/proc/self/fd");
  if (!dir) return -1;
  int found = -1;
  while (const dirent* e = readdir(dir)) {
    char* end = nullptr;
    const long fd = std::strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end != '\0' || fd == dirfd(dir)) continue;
    if (is_connection(int(fd), local_addr, local_port, remote_addr, remote_port)) {
      found = int(fd);
      break;
    }
  }
  closedir(dir);
  return found;
}

bool peer_closed(int fd) {
  pollfd p{fd, POLLRDHUP, 0};
  if (poll(&p, 1, 0) <= 0) return false;
  return (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

}  // namespace fairkv::serve
