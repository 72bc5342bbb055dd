// Package lb is the load balancer's desired state: virtual services, real
// servers, local-address (LIP) pools and schedulers. Every way of configuring
// mbx (ipvsadm commands, the YAML file) becomes Ops applied to a Config, which
// is validated whole before any backend sees it. Schedulers turn a service's
// real servers into a lookup table, computed once here, that every backend
// consumes unchanged.
package lb
