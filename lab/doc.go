// Package lab builds test and demo topologies from network namespaces and
// veth pairs, using only 198.18.0.0/15 and fd00:198::/64. Every name it
// creates starts with Prefix; stale topologies of dead processes are
// removed before a new one is built.
package lab
