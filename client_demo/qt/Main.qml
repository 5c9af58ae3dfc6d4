// The window of relay-qt: `relay` is the Session (client_demo/qt/session.py), its
// `tweets` the list model, newest first. Nothing here holds state the Session does not.
import QtQuick
import QtQuick.Controls.Basic
import QtQuick.Layouts

Rectangle {
    id: root
    width: 900
    height: 700
    color: "#f4f5f7"

    ColumnLayout {
        anchors.fill: parent
        anchors.margins: 12
        spacing: 8

        RowLayout {
            spacing: 10
            Rectangle {
                objectName: "liveDot"
                width: 12; height: 12; radius: 6
                color: relay.live ? "#2e9d4d" : "#a8a8b0"
            }
            Label { text: "tweet-relay"; font.bold: true; font.pixelSize: 18 }
            ComboBox {
                id: channelBox
                objectName: "channelBox"
                Layout.preferredWidth: 220
                model: relay.channels
                currentIndex: relay.channels.indexOf(relay.channel)
                onActivated: relay.openChannel(currentText)
            }
            Button {
                text: "Reconnect"
                visible: !relay.live && !relay.tokenNeeded
                onClicked: relay.reconnect()
            }
            Label {
                objectName: "status"
                Layout.fillWidth: true
                text: relay.status
                elide: Text.ElideRight
                color: relay.live ? "#1f5f32" : "#8a3b12"
            }
        }

        Label {
            objectName: "stats"
            visible: relay.stats !== ""
            text: relay.stats
            color: "#555a66"
            font.pixelSize: 12
        }

        RowLayout {
            visible: relay.tokenNeeded
            TextField {
                id: tokenField
                objectName: "tokenField"
                Layout.fillWidth: true
                placeholderText: "access token (a JWT from the relay's operator)"
                echoMode: TextInput.Password
                onAccepted: relay.giveToken(text)
            }
            Button { text: "Use token"; onClicked: relay.giveToken(tokenField.text) }
        }

        RowLayout {
            TextField {
                id: searchField
                Layout.fillWidth: true
                placeholderText: "Search stored tweets of " + relay.channel
                onAccepted: relay.search(text, allChannels.checked)
            }
            CheckBox { id: allChannels; text: "all channels" }
            Button { text: "Search"; onClicked: relay.search(searchField.text, allChannels.checked) }
            Button {
                text: "Live"
                visible: relay.searchStatus !== ""
                onClicked: { searchField.text = ""; relay.search("", false) }
            }
        }

        Label {
            visible: relay.searchStatus !== ""
            text: relay.searchStatus
            color: "#555a66"
        }

        ListView {
            id: list
            objectName: "tweetList"
            Layout.fillWidth: true
            Layout.fillHeight: true
            clip: true
            spacing: 6
            reuseItems: true
            cacheBuffer: 0  // rows come in at the top: none made ahead below the window
            model: relay.searchStatus !== "" ? relay.searchResults : relay.tweets
            delegate: Rectangle {
                id: card
                required property int seq
                required property string author
                required property string text
                required property string time
                required property int media
                required property string rules
                required property bool rightToLeft
                width: ListView.view.width
                height: column.implicitHeight + 14
                // Square corners: the software renderer paints rounded ones from a pixmap
                // it makes for each new row (about 2 ms a batch at p99, measured).
                color: "white"
                border.color: "#e0e2e8"

                Column {
                    id: column
                    x: 10; y: 7
                    width: card.width - 20
                    spacing: 3
                    Text {
                        width: parent.width
                        textFormat: Text.PlainText
                        elide: Text.ElideRight
                        color: "#5b6070"
                        font.pixelSize: 12
                        text: "@" + card.author + "  ·  " + card.time + "  ·  #" + card.seq
                            + (card.media > 0 ? "  ·  " + card.media + " media" : "")
                            + (card.rules !== "" ? "  ·  " + card.rules : "")
                    }
                    Text {
                        width: parent.width
                        wrapMode: Text.Wrap
                        textFormat: Text.StyledText
                        linkColor: "#1a62c7"
                        font.pixelSize: 15
                        color: "#15171c"
                        horizontalAlignment: card.rightToLeft ? Text.AlignRight : Text.AlignLeft
                        text: card.text
                        onLinkActivated: (link) => Qt.openUrlExternally(link)
                    }
                }
            }
        }
    }
}
