package xhyve

import (
	"fmt"
	"os"
)

// Artifact is the exported box and its catalog.
type Artifact struct {
	name     string   // vm_name: the box's name in the catalog
	files    []string // the .box, then the catalog
	checksum string   // TYPE:HEX of the .box
}

func (a *Artifact) BuilderId() string { return BuilderID }
func (a *Artifact) Files() []string   { return a.files }
func (a *Artifact) Id() string        { return a.name }

func (a *Artifact) String() string {
	return fmt.Sprintf("xhyve box: %s (%s); catalog: %s", a.files[0], a.checksum, a.files[1])
}

// State answers "checksum" (the box's TYPE:HEX), for post-processors.
func (a *Artifact) State(name string) interface{} {
	if name == "checksum" {
		return a.checksum
	}
	return nil
}

func (a *Artifact) Destroy() error {
	for _, f := range a.files {
		if err := os.Remove(f); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	return nil
}
