// The Pod sandbox's process (what registry.k8s.io/pause does): it holds the Pod's namespaces and waits
// until it is told to stop. Built static, into an image FROM scratch, because no registry is reachable here.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	// As PID 1 of the Pod it also reaps orphaned children (shareProcessNamespace).
	signal.Ignore(syscall.SIGCHLD)
	<-stop
}
