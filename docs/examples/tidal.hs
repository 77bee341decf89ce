-- musicgen-live from TidalCycles: an OSC target that sends /musicgen/ctrl <key> <value>.
-- Evaluate in your Tidal session (after BootTidal), then pattern the parameters.
:{
let mgTarget = Target {oName = "musicgen", oAddress = "127.0.0.1", oPort = 57130,
                       oLatency = 0.2, oWindow = Nothing, oSchedule = Pre BundleStamp,
                       oHandshake = False, oBusPort = Nothing}
    mgCtrl = OSC "/musicgen/ctrl" $ ArgList [("key", Nothing), ("value", Nothing)]
    mgPrompt = OSC "/musicgen/prompt" $ ArgList [("text", Nothing)]
    key = pS "key"
    value = pF "value"
    text = pS "text"
:}

mg <- startStream (defaultConfig {cCtrlListen = False}) [(mgTarget, [mgCtrl]), (mgTarget, [mgPrompt])]

-- guidance every bar, alternating
streamReplace mg "cfg" $ slow 2 $ key "cfg" # value "<2 5>"
-- a new prompt every 4 bars (bundles carry Tidal's timestamps: changes are heard on the beat)
streamReplace mg "prompt" $ slow 4 $ text "<\"dub techno\" \"acid house\">"
