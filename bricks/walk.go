package bricks

// Walk is the brick datapath in Go (bricks.h brick_walk's twin, for Go
// backends and offline use): where the engine on iface sends frame. It
// returns "redirect" and the output devices, or "pass" when a Filter does
// not take the frame (or no engine runs on iface).
func (p *Plan) Walk(iface string, frame []byte, seed uint32) (verdict string, devices []string) {
	byID := make(map[uint32]*Node, len(p.Nodes))
	for i := range p.Nodes {
		byID[p.Nodes[i].ID] = &p.Nodes[i]
	}
	var id uint32
	for _, e := range p.Engines {
		if e.Iface == iface {
			id = e.Root
		}
	}
	for range MaxDepth {
		n := byID[id]
		if n == nil {
			return "pass", nil
		}
		switch n.Kind {
		case NodeOutput:
			return "redirect", []string{n.Device}
		case NodeXSK:
			return "redirect", []string{n.Output}
		case NodeFilter:
			if ok, err := n.Filter.Match(frame); err != nil || !ok {
				return "pass", nil
			}
			id = n.Children[0]
		case NodeLB:
			id = n.Children[Pick(frame, n.Hash, len(n.Children), seed)]
		case NodeMerge:
			id = n.Children[0]
		case NodeDup:
			for _, c := range n.Children {
				devices = append(devices, byID[c].Device)
			}
			return "redirect", devices
		}
	}
	return "pass", nil
}
