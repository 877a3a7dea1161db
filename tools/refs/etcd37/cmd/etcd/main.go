// Command etcd is etcd 3.7's own server entry point, built from its module: the server
// version k8s.io/apiserver v0.37's storage tests embed (RangeStream is new in 3.7).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
